"""All SQL about uploads: plain functions over a session, run by ``Database.run``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, select, update
from sqlalchemy.orm import Session

from uploader.db.models import ConcatRole, Upload, UploadState, utcnow

# Core statements for updates: cheaper than the ORM's bulk-update bookkeeping.
_uploads = cast(Table, Upload.__table__)


def insert(session: Session, upload: Upload) -> Upload:
    session.add(upload)
    session.flush()
    return upload


def get(session: Session, upload_id: str) -> Upload | None:
    result = session.execute(select(Upload).where(Upload.id == upload_id))
    return result.scalar_one_or_none()


def get_many(session: Session, upload_ids: Sequence[str]) -> list[Upload]:
    result = session.execute(select(Upload).where(Upload.id.in_(list(upload_ids))))
    return list(result.scalars())


def set_fields(session: Session, upload: Upload, **fields: Any) -> None:
    """Update columns of an upload row and mirror them on the (detached) object."""
    fields.setdefault("updated_at", utcnow())
    session.execute(update(_uploads).where(_uploads.c.id == upload.id).values(**fields))
    for name, value in fields.items():
        setattr(upload, name, value)


def set_fields_if_state(session: Session, upload: Upload, expected_state: str, **fields: Any) -> bool:
    """Like ``set_fields``, only while the row is still in ``expected_state``."""
    fields.setdefault("updated_at", utcnow())
    result = session.execute(
        update(Upload).where(Upload.id == upload.id, Upload.state == expected_state).values(**fields)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        return False
    for name, value in fields.items():
        setattr(upload, name, value)
    return True


def page_for_owner(session: Session, owner: str, before_seq: int | None, limit: int) -> list[Upload]:
    query = (
        select(Upload)
        .where(Upload.owner == owner, Upload.concat_role != ConcatRole.PARTIAL)
        .order_by(Upload.seq.desc())
        .limit(limit)
    )
    if before_seq is not None:
        query = query.where(Upload.seq < before_seq)
    result = session.execute(query)
    return list(result.scalars())


def unfinished_finals(session: Session, owner: str) -> list[Upload]:
    result = session.execute(
        select(Upload).where(
            Upload.owner == owner,
            Upload.concat_role == ConcatRole.FINAL,
            Upload.state == UploadState.CREATED,
        )
    )
    return list(result.scalars())


def due_for_expiry(session: Session, now: datetime, limit: int) -> list[Upload]:
    result = session.execute(
        select(Upload)
        .where(
            Upload.expires_at.is_not(None),
            Upload.expires_at < now,
            Upload.state.not_in([UploadState.EXPIRED, UploadState.TERMINATED]),
        )
        .order_by(Upload.expires_at)
        .limit(limit)
    )
    return list(result.scalars())


def in_states(session: Session, states: Sequence[str]) -> list[Upload]:
    result = session.execute(
        select(Upload)
        .where(Upload.state.in_(list(states)), Upload.concat_role != ConcatRole.PARTIAL)
        .order_by(Upload.seq)
    )
    return list(result.scalars())
