"""ORM models, kept together to avoid import cycles between domains."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Integer, MetaData, String, Text, TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is not None and dialect.name == "sqlite":
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UploadState(enum.StrEnum):
    CREATED = "created"
    RECEIVING = "receiving"
    RECEIVED = "received"
    PROCESSING = "processing"
    READY = "ready"
    FAILED = "failed"
    EXPIRED = "expired"
    TERMINATED = "terminated"


GONE_STATES = frozenset({UploadState.EXPIRED, UploadState.TERMINATED})
COMPLETE_STATES = frozenset(
    {UploadState.RECEIVED, UploadState.PROCESSING, UploadState.READY, UploadState.FAILED}
)


class ConcatRole(enum.StrEnum):
    NONE = "none"
    PARTIAL = "partial"
    FINAL = "final"


class Upload(Base):
    __tablename__ = "uploads"

    # Internal monotonic key: stable cursor pagination without exposing row counts.
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(32), unique=True, index=True)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    state: Mapped[str] = mapped_column(String(20), default=UploadState.CREATED)
    length: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    offset: Mapped[int] = mapped_column(BigInteger, default=0)
    storage_key: Mapped[str] = mapped_column(String(200))
    meta: Mapped[dict[str, str | None]] = mapped_column(JSON, default=dict)
    filename: Mapped[str | None] = mapped_column(Text, nullable=True)
    declared_type: Mapped[str | None] = mapped_column(String(255), nullable=True)
    concat_role: Mapped[str] = mapped_column(String(10), default=ConcatRole.NONE)
    concat_parts: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True, index=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    @property
    def is_complete(self) -> bool:
        return self.state in COMPLETE_STATES

    @property
    def is_gone(self) -> bool:
        return self.state in GONE_STATES
