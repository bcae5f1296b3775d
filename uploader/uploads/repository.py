"""All SQL about uploads."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from uploader.db.models import ConcatRole, Upload, UploadState, utcnow


async def insert(session: AsyncSession, upload: Upload) -> Upload:
    session.add(upload)
    await session.flush()
    return upload


async def get(session: AsyncSession, upload_id: str) -> Upload | None:
    result = await session.execute(select(Upload).where(Upload.id == upload_id))
    return result.scalar_one_or_none()


async def get_many(session: AsyncSession, upload_ids: Sequence[str]) -> list[Upload]:
    result = await session.execute(select(Upload).where(Upload.id.in_(list(upload_ids))))
    return list(result.scalars())


async def set_fields(session: AsyncSession, upload: Upload, **fields: Any) -> None:
    """Update columns of an upload row and mirror them on the (detached) object."""
    fields.setdefault("updated_at", utcnow())
    await session.execute(update(Upload).where(Upload.id == upload.id).values(**fields))
    for name, value in fields.items():
        setattr(upload, name, value)


async def set_fields_if_state(
    session: AsyncSession, upload: Upload, expected_state: str, **fields: Any
) -> bool:
    """Like ``set_fields``, only while the row is still in ``expected_state``."""
    fields.setdefault("updated_at", utcnow())
    result = await session.execute(
        update(Upload).where(Upload.id == upload.id, Upload.state == expected_state).values(**fields)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        return False
    for name, value in fields.items():
        setattr(upload, name, value)
    return True


async def page_for_owner(
    session: AsyncSession, owner: str, before_seq: int | None, limit: int
) -> list[Upload]:
    query = (
        select(Upload)
        .where(Upload.owner == owner, Upload.concat_role != ConcatRole.PARTIAL)
        .order_by(Upload.seq.desc())
        .limit(limit)
    )
    if before_seq is not None:
        query = query.where(Upload.seq < before_seq)
    result = await session.execute(query)
    return list(result.scalars())


async def unfinished_finals(session: AsyncSession, owner: str) -> list[Upload]:
    result = await session.execute(
        select(Upload).where(
            Upload.owner == owner,
            Upload.concat_role == ConcatRole.FINAL,
            Upload.state == UploadState.CREATED,
        )
    )
    return list(result.scalars())


async def due_for_expiry(session: AsyncSession, now: datetime, limit: int) -> list[Upload]:
    result = await session.execute(
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


async def in_states(session: AsyncSession, states: Sequence[str]) -> list[Upload]:
    result = await session.execute(
        select(Upload)
        .where(Upload.state.in_(list(states)), Upload.concat_role != ConcatRole.PARTIAL)
        .order_by(Upload.seq)
    )
    return list(result.scalars())
