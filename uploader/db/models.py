"""The schema (Core tables) and the plain row objects the service works with."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    false,
)

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


class UploadState(enum.StrEnum):
    CREATED = "created"
    RECEIVING = "receiving"
    RECEIVED = "received"
    PROCESSING = "processing"
    READY = "ready"
    FAILED = "failed"
    REJECTED = "rejected"  # processing refused the file itself (malware): its bytes are gone
    EXPIRED = "expired"
    TERMINATED = "terminated"


GONE_STATES = frozenset({UploadState.EXPIRED, UploadState.TERMINATED})
COMPLETE_STATES = frozenset(
    {
        UploadState.RECEIVED,
        UploadState.PROCESSING,
        UploadState.READY,
        UploadState.FAILED,
        UploadState.REJECTED,
    }
)


class ConcatRole(enum.StrEnum):
    NONE = "none"
    PARTIAL = "partial"
    FINAL = "final"


metadata = MetaData(naming_convention=NAMING_CONVENTION)

uploads = Table(
    "uploads",
    metadata,
    # Internal monotonic key: stable cursor pagination without exposing row counts.
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(32), nullable=False, unique=True, index=True),
    Column("owner", String(200), nullable=False, index=True),
    Column("state", String(20), nullable=False),
    Column("length", BigInteger, nullable=True),
    Column("offset", BigInteger, nullable=False),
    Column("storage_key", String(200), nullable=False),
    Column("meta", JSON, nullable=False),
    Column("filename", Text, nullable=True),
    Column("declared_type", String(255), nullable=True),
    Column("concat_role", String(10), nullable=False),
    Column("concat_parts", JSON, nullable=True),
    Column("sha256", String(64), nullable=True),
    Column("failure_reason", Text, nullable=True),
    # What processing found: the sniffed type, step progress, image facts, variants.
    Column("detected_type", String(255), nullable=True),
    Column("processing", JSON, nullable=True),
    Column("media", JSON, nullable=True),
    Column("variants", JSON, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=True, index=True),
    Column("completed_at", UTCDateTime(), nullable=True),
    # The lock generation of the last writer that recorded an offset: a writer holding an
    # older one has lost its lock, and its records are refused (fencing).
    Column("writer_generation", BigInteger, nullable=False, server_default="0"),
    # Whether that writer's write is still open: set when it claimed the row, cleared by
    # the record that ends its write. Left set, the writer died or lost its lock mid-write.
    Column("writer_active", Boolean, nullable=False, server_default=false()),
    # Limits of the upload token that made it: media type patterns its detected type must
    # match, and bytes at most (for a length declared later).
    Column("allowed_types", JSON, nullable=True),
    Column("size_limit", BigInteger, nullable=True),
    # Its bytes were removed although the row stays (a type the token did not allow):
    # they no longer count against the owner's quota, and downloads are refused.
    Column("bytes_removed", Boolean, nullable=False, server_default=false()),
    # How it came: tus, ietf, form or s3-direct (null for uploads made before it was kept).
    Column("protocol", String(16), nullable=True),
    # The SHA-256 the client declared for the whole file (Repr-Digest): the bytes must
    # match it when the upload completes.
    Column("declared_sha256", String(64), nullable=True),
    # Pruning tombstones: terminated and expired rows by age.
    Index("ix_uploads_state_updated_at", "state", "updated_at"),
    # Quota: what an owner holds.
    Index("ix_uploads_owner_state", "owner", "state"),
    # The orphan sweep: which stored keys a row names.
    Index("ix_uploads_storage_key", "storage_key"),
    # Deduplication: an owner's upload with this SHA-256.
    Index("ix_uploads_owner_sha256", "owner", "sha256"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("principal", String(200), nullable=False),
    # SHA-256 of the key: the key itself is shown once, when it is made, and never kept.
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("scopes", String(200), nullable=False),
    Column("quota_bytes", BigInteger, nullable=True),
    Column("quota_active_uploads", Integer, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime(), nullable=True),
)

# What each principal holds: kept by triggers on ``uploads`` (migration 0005), in the
# transaction of every change to an upload row.
principal_usage = Table(
    "principal_usage",
    metadata,
    Column("owner", String(200), primary_key=True),
    Column("bytes", BigInteger, nullable=False),
    Column("active_uploads", Integer, nullable=False),
)

# Files made with each upload token that limits them (by the token's ``jti``).
token_uses = Table(
    "token_uses",
    metadata,
    Column("jti", String(255), primary_key=True),
    Column("used", Integer, nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False, index=True),
)


# Webhook events, written in the transaction of the change each reports, and delivered
# from here: at least once, under one delivery id, in order per upload (migration 0006).
webhook_outbox = Table(
    "webhook_outbox",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(32), nullable=False, unique=True),  # X-Uploader-Delivery
    Column("upload_id", String(32), nullable=False),
    Column("owner", String(200), nullable=False),
    Column("type", String(40), nullable=False),
    # The delivery's JSON body, rendered once when the event is written (0009).
    Column("body", Text, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("status", String(12), nullable=False),  # pending, delivered or dead
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    # A dispatcher that claimed the row holds it until then (one that died lets go).
    Column("lease_until", UTCDateTime(), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("delivered_at", UTCDateTime(), nullable=True),
    Column("request_id", String(128), nullable=True),  # of the request that caused it (0007)
    Column("traceparent", String(64), nullable=True),  # its trace, when traced (0008)
    Index("ix_webhook_outbox_status_next_attempt_at", "status", "next_attempt_at"),
    Index("ix_webhook_outbox_upload_id_seq", "upload_id", "seq"),
)


@dataclass(slots=True, kw_only=True)
class Upload:
    """One row of ``uploads``: a plain object (rows never live in an ORM session, and
    attribute instrumentation cost more than it gave on the hot path)."""

    id: str
    owner: str
    storage_key: str
    state: str = UploadState.CREATED
    length: int | None = None
    offset: int = 0
    meta: dict[str, str | None] = field(default_factory=dict)
    filename: str | None = None
    declared_type: str | None = None
    concat_role: str = ConcatRole.NONE
    concat_parts: list[str] | None = None
    sha256: str | None = None
    failure_reason: str | None = None
    detected_type: str | None = None
    processing: dict[str, Any] | None = None
    media: dict[str, Any] | None = None
    variants: list[dict[str, Any]] | None = None
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    expires_at: datetime | None = None
    completed_at: datetime | None = None
    writer_generation: int = 0
    writer_active: bool = False
    allowed_types: list[str] | None = None
    size_limit: int | None = None
    bytes_removed: bool = False
    protocol: str | None = None
    declared_sha256: str | None = None
    seq: int | None = None
    # Not a column: a completion of this request's, stored whole and held back for the
    # pre-finish hook (``uploads.core.AwaitingFinish``).
    awaiting_finish: Any = None

    @property
    def is_complete(self) -> bool:
        return self.state in COMPLETE_STATES

    @property
    def is_gone(self) -> bool:
        return self.state in GONE_STATES
