"""All SQL about uploads: plain functions over a connection, run by ``Database.run``.

Core statements throughout: on the hot path (a few statements per upload) the ORM's
unit of work and loading machinery cost more than the SQL itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Row, Select, Table, select, update
from sqlalchemy import insert as sql_insert

from uploader.db.models import ConcatRole, Upload, UploadState, utcnow

_uploads = cast(Table, Upload.__table__)
_c = _uploads.c


def _upload_of(row: Row[Any]) -> Upload:
    return Upload(**row._mapping)


def _uploads_of(connection: Connection, query: Select[Any]) -> list[Upload]:
    return [_upload_of(row) for row in connection.execute(query)]


def insert(connection: Connection, upload: Upload) -> Upload:
    values = {
        column.name: getattr(upload, column.name) for column in _uploads.columns if column.name != "seq"
    }
    result = connection.execute(sql_insert(_uploads).values(**values))
    primary_key = result.inserted_primary_key
    assert primary_key is not None
    upload.seq = primary_key[0]
    return upload


def get(connection: Connection, upload_id: str) -> Upload | None:
    row = connection.execute(select(_uploads).where(_c.id == upload_id)).first()
    return _upload_of(row) if row is not None else None


def get_many(connection: Connection, upload_ids: Sequence[str]) -> list[Upload]:
    return _uploads_of(connection, select(_uploads).where(_c.id.in_(list(upload_ids))))


def set_fields(connection: Connection, upload: Upload, **fields: Any) -> None:
    """Update columns of an upload row and mirror them on the (detached) object."""
    fields.setdefault("updated_at", utcnow())
    connection.execute(update(_uploads).where(_c.id == upload.id).values(**fields))
    for name, value in fields.items():
        setattr(upload, name, value)


def set_fields_if_state(connection: Connection, upload: Upload, expected_state: str, **fields: Any) -> bool:
    """Like ``set_fields``, only while the row is still in ``expected_state``."""
    fields.setdefault("updated_at", utcnow())
    result = connection.execute(
        update(_uploads).where(_c.id == upload.id, _c.state == expected_state).values(**fields)
    )
    if not result.rowcount:
        return False
    for name, value in fields.items():
        setattr(upload, name, value)
    return True


def page_for_owner(connection: Connection, owner: str, before_seq: int | None, limit: int) -> list[Upload]:
    query = (
        select(_uploads)
        .where(_c.owner == owner, _c.concat_role != ConcatRole.PARTIAL)
        .order_by(_c.seq.desc())
        .limit(limit)
    )
    if before_seq is not None:
        query = query.where(_c.seq < before_seq)
    return _uploads_of(connection, query)


def unfinished_finals(connection: Connection, owner: str) -> list[Upload]:
    return _uploads_of(
        connection,
        select(_uploads).where(
            _c.owner == owner,
            _c.concat_role == ConcatRole.FINAL,
            _c.state == UploadState.CREATED,
        ),
    )


def due_for_expiry(connection: Connection, now: datetime, limit: int) -> list[Upload]:
    return _uploads_of(
        connection,
        select(_uploads)
        .where(
            _c.expires_at.is_not(None),
            _c.expires_at < now,
            _c.state.not_in([UploadState.EXPIRED, UploadState.TERMINATED]),
        )
        .order_by(_c.expires_at)
        .limit(limit),
    )


def in_states(connection: Connection, states: Sequence[str]) -> list[Upload]:
    return _uploads_of(
        connection,
        select(_uploads)
        .where(_c.state.in_(list(states)), _c.concat_role != ConcatRole.PARTIAL)
        .order_by(_c.seq),
    )
