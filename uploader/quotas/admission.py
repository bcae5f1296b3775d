"""Whether a principal may create an upload: its token's limits (size, types, files per
token, forced metadata), its quota (bytes held, unfinished uploads) and its creation rate.

What needs no database is checked before anything is stored. Files per token and the
quota are checked in the transaction that records the upload, so processes creating at
once cannot overrun them together: files per token by one conditional upsert, the quota
by reading the owner's usage row once the upload is inserted. Triggers on ``uploads``
keep that row (migration 0005), and the insert's update of it holds the row until the
transaction ends, so two processes creating for one owner take turns (on SQLite, its one
writer does). A principal with no limits adds no statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, delete, select
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from uploader.auth.principal import Principal, type_allowed
from uploader.db.models import principal_usage, token_uses
from uploader.kit.errors import ProblemError
from uploader.quotas.rate import RateLimits
from uploader.settings import Settings
from uploader.uploads.metadata import declared_type_of, encode_value

_usage = principal_usage.c


@dataclass(frozen=True)
class Admitted:
    """What creation records on the upload from its principal's limits."""

    meta: dict[str, str | None]
    allowed_types: list[str] | None = None
    size_limit: int | None = None
    counted: bool = False  # whether recording it must check files or quota
    files: bool = True  # whether it counts against the token's files (a part does not)


@dataclass(frozen=True)
class Usage:
    bytes: int
    active_uploads: int


_USAGE = select(_usage.bytes, _usage.active_uploads).where(_usage.owner == bindparam("owner"))
_USAGE_SQLITE = "SELECT bytes, active_uploads FROM principal_usage WHERE owner = ?"


def usage_of(connection: Connection, owner: str) -> Usage:
    """Bytes held (a declared length counts from creation; without one, what arrived) and
    unfinished uploads. Gone uploads and those whose bytes were removed hold nothing.

    On SQLite the query runs on the driver's cursor (as the hottest writes do): through
    ``Connection.execute`` it cost about 250 µs of CPU, most of a small creation's quota
    check, against SQLite's few microseconds."""
    row: Any
    if connection.dialect.name == "sqlite":
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            row = cursor.execute(_USAGE_SQLITE, (owner,)).fetchone()
        finally:
            cursor.close()
    else:
        row = connection.execute(_USAGE, {"owner": owner}).first()
    return Usage(int(row[0]), int(row[1])) if row is not None else Usage(0, 0)


class Admission:
    def __init__(self, settings: Settings, rates: RateLimits) -> None:
        self.settings = settings
        self.rates = rates

    def quota_of(self, principal: Principal) -> tuple[int | None, int | None]:
        own = principal.quota
        return (
            own.bytes if own.bytes is not None else self.settings.quota_bytes,
            own.active_uploads if own.active_uploads is not None else self.settings.quota_active_uploads,
        )

    async def admit(
        self,
        principal: Principal,
        length: int | None,
        meta: dict[str, str | None],
        *,
        declared_type: str | None = None,
        rate_cost: int = 1,
        per_file: bool = False,
        partial: bool = False,
    ) -> Admitted:
        """The checks that need no database, before anything is stored: the creation rate,
        the token's size and types (``per_file``: the caller checks those as each file
        begins, a form). A partial upload is a piece of a file, not one: its type and the
        token's files are checked on the final upload that joins the pieces. Returns the
        metadata with the token's pairs forced in."""
        principal.require("upload")
        if rate_cost:
            await self.rates.hit_create(principal.name, rate_cost)
        limits = principal.limits
        quota_bytes, quota_active = self.quota_of(principal)
        counted = quota_bytes is not None or quota_active is not None
        if limits is None:
            return Admitted(meta, counted=counted)
        if limits.max_size is not None and length is not None and length > limits.max_size:
            raise ProblemError(
                "upload.too_large", f"this token allows files of {limits.max_size} bytes at most"
            )
        if limits.types is not None and not per_file and not partial:
            self.check_type(principal, declared_type or declared_type_of(meta))
        if limits.metadata:
            meta = {**meta, **{key: encode_value(value) for key, value in limits.metadata.items()}}
        return Admitted(
            meta,
            allowed_types=list(limits.types) if limits.types is not None else None,
            size_limit=limits.max_size,
            counted=counted or (limits.max_files is not None and not partial),
            files=not partial,
        )

    @staticmethod
    def check_type(principal: Principal, declared: str | None) -> None:
        """A declared type among the token's types (none declared: refused too)."""
        types = principal.limits.types if principal.limits is not None else None
        if types is not None and not type_allowed(declared, types):
            what = f"{declared!r} is not" if declared else "an undeclared type is not"
            raise ProblemError(
                "upload.type_not_allowed", f"{what} among this token's types ({', '.join(types)})"
            )

    @staticmethod
    def max_size_of(principal: Principal, server_maximum: int) -> int:
        limits = principal.limits
        if limits is None or limits.max_size is None:
            return server_maximum
        return min(server_maximum, limits.max_size)

    def reserve(
        self,
        connection: Connection,
        principal: Principal,
        lengths: Sequence[int | None],
        *,
        files: bool = True,
    ) -> None:
        """In the transaction that records ``len(lengths)`` new uploads, after their insert:
        count them against the token's files and the principal's quota; raises (rolling
        the transaction back) when over."""
        limits = principal.limits
        if files and limits is not None and limits.max_files is not None and limits.token_id is not None:
            self._count_files(connection, limits.token_id, limits.max_files, limits.expires_at, len(lengths))
        quota_bytes, quota_active = self.quota_of(principal)
        if quota_bytes is None and quota_active is None:
            return
        now = usage_of(connection, principal.name)  # with the new uploads
        adding = sum(n or 0 for n in lengths)
        used = Usage(now.bytes - adding, now.active_uploads)
        # Over, or (for an upload whose length comes later) full already.
        if quota_bytes is not None and (now.bytes > quota_bytes or (not adding and now.bytes >= quota_bytes)):
            raise ProblemError(
                "quota.exceeded",
                f"{used.bytes} of {quota_bytes} bytes are held; {adding} more would be over",
                members={"quota": "bytes", "used": used.bytes, "limit": quota_bytes},
            )
        unfinished = sum(1 for n in lengths if n is None or n > 0)
        if quota_active is not None and unfinished and now.active_uploads > quota_active:
            before = now.active_uploads - unfinished
            raise ProblemError(
                "quota.exceeded",
                f"{before} of {quota_active} unfinished uploads are under way",
                members={"quota": "active_uploads", "used": before, "limit": quota_active},
            )

    @staticmethod
    def _count_files(
        connection: Connection, token_id: str, max_files: int, expires_at: float | None, count: int
    ) -> None:
        if count > max_files:
            raise ProblemError("token.exhausted", f"this token may make {max_files} files")
        expiry = (
            datetime.fromtimestamp(expires_at, UTC) if expires_at else datetime.now(UTC) + timedelta(days=1)
        )
        insert: Any = postgres_insert if connection.dialect.name == "postgresql" else sqlite_insert
        statement = (
            insert(token_uses)
            .values(jti=token_id, used=count, expires_at=expiry)
            .on_conflict_do_update(
                index_elements=[token_uses.c.jti],
                set_={"used": token_uses.c.used + count},
                where=token_uses.c.used + count <= max_files,
            )
            .returning(token_uses.c.used)
        )
        if connection.execute(statement).first() is None:
            raise ProblemError("token.exhausted", f"this token has made the {max_files} files it may")


def prune_token_uses(connection: Connection, before: datetime) -> int:
    """Counts of tokens that have expired can go: the tokens are refused anyway."""
    return int(connection.execute(delete(token_uses).where(token_uses.c.expires_at < before)).rowcount or 0)
