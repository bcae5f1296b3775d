"""All SQL about uploads: plain functions over a connection, run by ``Database.run``.

Core statements throughout, and the hot ones (insert, get, update by id) built once with
bound parameters: on the hot path building a statement costs more than running it
(measured on SQLite: 0.19 ms for an update built per call, 0.06 ms prebuilt).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Row, Select, bindparam, delete, select, update
from sqlalchemy import insert as sql_insert

from uploader.db.driver import DriverConnection, DriverStatement
from uploader.db.models import ConcatRole, Upload, UploadState, uploads, utcnow

_uploads = uploads
_c = _uploads.c
_GET = DriverStatement(select(_uploads).where(_c.id == bindparam("key")), {"key": _c.id})
_COLUMNS = tuple(
    column.name
    for column in _uploads.columns
    if column.name not in ("seq", "writer_generation", "writer_active")
)
_WRITABLE = (UploadState.CREATED, UploadState.RECEIVING)
_INSERT = DriverStatement(sql_insert(_uploads), {name: _c[name] for name in _COLUMNS})


@lru_cache(maxsize=128)
def _update(names: tuple[str, ...], guard: str | None) -> DriverStatement:
    """``UPDATE uploads SET <names> WHERE id = :key [AND <guard>]``, built once.

    Guards: ``state``, the row is still in ``:expected``; ``fenced``, the row takes
    writes (created or receiving) and no writer of a newer generation than
    ``:generation`` recorded to it, which then becomes the row's."""
    statement = update(_uploads).where(_c.id == bindparam("key"))
    columns = {"key": _c.id, **{f"new_{name}": _c[name] for name in names}}
    values: dict[str, Any] = {name: bindparam(f"new_{name}") for name in names}
    if guard == "state":
        # Not ``=``: a plan that PostgreSQL keeps (see ``_CLAIM_RETURNING``) could then
        # find the row through the state's index, among every upload in that state.
        statement = statement.where(_c.state.is_not_distinct_from(bindparam("expected")))
        columns["expected"] = _c.state
    elif guard == "fenced":
        statement = statement.where(
            _c.writer_generation <= bindparam("generation"),
            (_c.state == bindparam("writable_a")) | (_c.state == bindparam("writable_b")),
        )
        values["writer_generation"] = bindparam("new_generation")
        columns.update(
            generation=_c.writer_generation,
            new_generation=_c.writer_generation,
            writable_a=_c.state,
            writable_b=_c.state,
        )
    return DriverStatement(statement.values(values), columns)


def _execute_update(
    connection: Connection,
    upload_id: str,
    fields: dict[str, Any],
    expected_state: str | None = None,
    generation: int | None = None,
) -> int:
    names = tuple(sorted(fields))
    params = {f"new_{name}": fields[name] for name in names}
    params["key"] = upload_id
    guard = None
    if expected_state is not None:
        params["expected"] = expected_state
        guard = "state"
    elif generation is not None:
        params.update(generation=generation, new_generation=generation)
        params["writable_a"], params["writable_b"] = _WRITABLE
        guard = "fenced"
    changed, _ = _update(names, guard).execute(connection, params)
    return changed


def _upload_of(row: Row[Any]) -> Upload:
    return Upload(**row._mapping)


def _uploads_of(connection: Connection, query: Select[Any]) -> list[Upload]:
    return [_upload_of(row) for row in connection.execute(query)]


def insert(connection: Connection, upload: Upload) -> Upload:
    _, seq = _INSERT.execute(connection, {name: getattr(upload, name) for name in _COLUMNS})
    assert seq is not None
    upload.seq = seq
    return upload


def get(connection: Connection | DriverConnection, upload_id: str) -> Upload | None:
    rows = _GET.mappings(connection, {"key": upload_id})
    return Upload(**rows[0]) if rows else None


def get_many(connection: Connection, upload_ids: Sequence[str]) -> list[Upload]:
    return _uploads_of(connection, select(_uploads).where(_c.id.in_(list(upload_ids))))


def set_fields(connection: Connection, upload: Upload, **fields: Any) -> None:
    """Update columns of an upload row and mirror them on the (detached) object."""
    fields.setdefault("updated_at", utcnow())
    _execute_update(connection, upload.id, fields)
    for name, value in fields.items():
        setattr(upload, name, value)


def set_fields_if_state(connection: Connection, upload: Upload, expected_state: str, **fields: Any) -> bool:
    """Like ``set_fields``, only while the row is still in ``expected_state``."""
    fields.setdefault("updated_at", utcnow())
    if not _execute_update(connection, upload.id, fields, expected_state):
        return False
    for name, value in fields.items():
        setattr(upload, name, value)
    return True


def record_write(connection: Connection, upload: Upload, generation: int, **fields: Any) -> bool:
    """What a writer holding lock ``generation`` stored: recorded (and mirrored on the
    object) only while the upload takes writes and no newer writer has recorded to it."""
    fields.setdefault("updated_at", utcnow())
    if not _execute_update(connection, upload.id, fields, generation=generation):
        return False
    for name, value in fields.items():
        setattr(upload, name, value)
    upload.writer_generation = generation
    return True


_CLAIM = update(_uploads).where(_c.id == bindparam("key"), _c.writer_generation < bindparam("generation"))


# PostgreSQL: the claim in one statement, which also says whether the write before it
# was left open (the row as it was, locked, joined to the update).
_BEFORE = (
    select(_c.id.label("claimed_id"), _c.writer_active.label("was_active"))
    .where(_c.id == bindparam("key"))
    .with_for_update()
    .subquery("before")
)
# The id is named on the updated row too, not only through the join: asyncpg prepares a
# statement once per connection, and the generic plan PostgreSQL may keep for it from then
# on was made when the table was new and empty, where reading it all looked as cheap as the
# index; that plan read the whole table for every claim as it grew.
_CLAIM_RETURNING = DriverStatement(
    update(_uploads)
    .where(
        _c.id == bindparam("key"),
        _c.id == _BEFORE.c.claimed_id,
        _c.writer_generation < bindparam("generation"),
    )
    .values(writer_generation=bindparam("generation"), writer_active=True)
    .returning(*_uploads.c, _BEFORE.c.was_active),
    {"key": _c.id, "generation": _c.writer_generation},
)
# Elsewhere: after a read of the row, the update guarded by the generation.
_CLAIM_AFTER_READ = DriverStatement(
    _CLAIM.values(writer_generation=bindparam("generation"), writer_active=True),
    {"key": _c.id, "generation": _c.writer_generation},
)


def claim_for_writing(
    connection: Connection | DriverConnection, upload_id: str, generation: int
) -> tuple[Upload, bool] | None:
    """The upload, now fenced against every writer older than ``generation`` (whose
    records are refused from here on) and marked as being written, and whether an older
    writer's write was still open when it was claimed (it died, or lost its lock, in the
    middle of a write); None when there is no such upload."""
    params = {"key": upload_id, "generation": generation}
    if connection.dialect.name == "postgresql":
        rows = _CLAIM_RETURNING.mappings(connection, params)
        if rows:
            fields = dict(rows[0])
            return Upload(**{k: v for k, v in fields.items() if k != "was_active"}), fields["was_active"]
        # Not claimed: no such upload, or a writer as new or newer has it (read below).
    before = get(connection, upload_id)
    if before is None:
        return None
    _CLAIM_AFTER_READ.execute(connection, params)
    open_before = before.writer_active and before.writer_generation < generation
    if before.writer_generation < generation:
        before.writer_generation, before.writer_active = generation, True
    return before, open_before


def prune_tombstones(connection: Connection, before: datetime, limit: int) -> list[tuple[str, str]]:
    """Delete rows of uploads terminated or expired before ``before``; their (id, owner)."""
    rows = connection.execute(
        select(_c.id, _c.owner)
        .where(_c.state.in_([UploadState.TERMINATED, UploadState.EXPIRED]), _c.updated_at < before)
        .limit(limit)
    ).all()
    ids = [row.id for row in rows]
    if ids:
        connection.execute(delete(_uploads).where(_c.id.in_(ids)))
    return [(row.id, row.owner) for row in rows]


def page_for_owner(
    connection: Connection, owner: str | None, before_seq: int | None, limit: int
) -> list[Upload]:
    """Newest first; ``owner`` None: everyone's. Terminated uploads are not listed (their
    status is a 404 too); expired ones are, until their rows are pruned."""
    query = (
        select(_uploads)
        .where(_c.concat_role != ConcatRole.PARTIAL, _c.state != UploadState.TERMINATED)
        .order_by(_c.seq.desc())
        .limit(limit)
    )
    if owner is not None:
        query = query.where(_c.owner == owner)
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


def stale_in_state(connection: Connection, state: str, before: datetime, limit: int) -> list[Upload]:
    """Uploads sitting in ``state`` since before ``before`` (work that was never picked up)."""
    return _uploads_of(
        connection,
        select(_uploads)
        .where(_c.state == state, _c.updated_at < before, _c.concat_role != ConcatRole.PARTIAL)
        .order_by(_c.updated_at)
        .limit(limit),
    )


def storage_keys_in_use(connection: Connection, keys: Sequence[str]) -> set[str]:
    """Which of ``keys`` an upload row names (in any state: a row is a live upload or a
    tombstone whose bytes its removal takes care of)."""
    rows = connection.execute(select(_c.storage_key).where(_c.storage_key.in_(list(keys))))
    return {row.storage_key for row in rows}


def by_storage_key(connection: Connection, storage_key: str) -> Upload | None:
    row = connection.execute(select(_uploads).where(_c.storage_key == storage_key).limit(1)).first()
    return _upload_of(row) if row is not None else None


def awaiting_object(connection: Connection, protocol: str, quiet_since: datetime, limit: int) -> list[Upload]:
    """Uploads of ``protocol`` still receiving, oldest first, but those with progress
    recorded since ``quiet_since``: direct uploads whose object may have landed in S3."""
    query = (
        select(_uploads)
        .where(
            _c.state == UploadState.RECEIVING,
            _c.protocol == protocol,
            (_c.offset == 0) | (_c.updated_at < quiet_since),
        )
        .order_by(_c.seq)
        .limit(limit)
    )
    return _uploads_of(connection, query)


def duplicate_of(connection: Connection, owner: str, sha256: str, length: int) -> Upload | None:
    """An owner's ready upload of these bytes (its SHA-256 computed here), locked until the
    caller's transaction ends: a removal waits for a link to it, or a link sees it gone."""
    query = (
        select(_uploads)
        .where(
            _c.owner == owner,
            _c.sha256 == sha256,
            _c.length == length,
            _c.state == UploadState.READY,
            _c.bytes_removed.is_(False),
        )
        .order_by(_c.seq)
        .limit(1)
        .with_for_update()
    )
    row = connection.execute(query).first()
    return _upload_of(row) if row is not None else None


def _sharing(upload: Upload) -> Any:
    return (
        _c.storage_key == upload.storage_key,
        _c.id != upload.id,
        _c.state.not_in([UploadState.TERMINATED, UploadState.EXPIRED]),
        _c.bytes_removed.is_(False),
    )


def shares_storage(connection: Connection, upload: Upload) -> bool:
    """Whether another upload that still has its bytes uses ``upload``'s stored object
    (a deduplicated upload, or the one it was linked to)."""
    return connection.execute(select(_c.id).where(*_sharing(upload)).limit(1)).first() is not None


def sharers(connection: Connection, upload: Upload) -> list[Upload]:
    """The other uploads that still have their bytes in ``upload``'s stored object, locked
    for update (PostgreSQL) in the caller's transaction."""
    query = select(_uploads).where(*_sharing(upload)).order_by(_c.id).with_for_update()
    return [_upload_of(row) for row in connection.execute(query)]
