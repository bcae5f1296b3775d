"""API keys kept in the database: only a SHA-256 of each is stored.

A key is ``upk_``, its public id (12 hex digits), ``_`` and 43 random URL-safe
characters: secret scanners recognise the prefix, and the id finds the record whose hash
the key is compared with, in constant time. The random part has 256 bits of entropy: a
plain SHA-256 of it is as safe to keep as a slow password hash, and costs microseconds.
Found keys are cached for a few seconds per process; a revocation takes effect everywhere
once that has passed.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update

from uploader.auth.principal import Principal, Quota, parse_scopes
from uploader.db.engine import Database
from uploader.db.models import api_keys, utcnow

KEY_PREFIX = "upk_"
CACHE_ENTRIES = 10_000


ID_LENGTH = 12


def new_key(key_id: str) -> str:
    return f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def id_of(presented: str) -> str | None:
    """The record id a presented key names, if it has the shape of one of ours."""
    if not presented.startswith(KEY_PREFIX) or len(presented) < len(KEY_PREFIX) + ID_LENGTH + 2:
        return None
    key_id = presented[len(KEY_PREFIX) : len(KEY_PREFIX) + ID_LENGTH]
    if presented[len(KEY_PREFIX) + ID_LENGTH] != "_" or not all(c in "0123456789abcdef" for c in key_id):
        return None
    return key_id


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    principal: str
    scopes: frozenset[str]
    quota_bytes: int | None
    quota_active_uploads: int | None
    created_at: datetime
    revoked_at: datetime | None

    def as_principal(self) -> Principal:
        return Principal(
            self.principal,
            self.scopes,
            quota=Quota(self.quota_bytes, self.quota_active_uploads),
            source="key",
        )


def _from_row(row: Any) -> ApiKey:
    return ApiKey(
        id=row.id,
        name=row.name,
        principal=row.principal,
        scopes=parse_scopes(row.scopes),
        quota_bytes=row.quota_bytes,
        quota_active_uploads=row.quota_active_uploads,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


def create(
    connection: Connection,
    name: str,
    principal: str,
    scopes: frozenset[str],
    quota_bytes: int | None = None,
    quota_active_uploads: int | None = None,
) -> tuple[ApiKey, str]:
    """A new key: its record, and the key itself (shown once, never stored)."""
    key_id = secrets.token_hex(ID_LENGTH // 2)
    key = new_key(key_id)
    record = ApiKey(
        id=key_id,
        name=name,
        principal=principal,
        scopes=scopes,
        quota_bytes=quota_bytes,
        quota_active_uploads=quota_active_uploads,
        created_at=utcnow(),
        revoked_at=None,
    )
    connection.execute(
        api_keys.insert().values(
            id=record.id,
            name=name,
            principal=principal,
            key_hash=key_hash(key),
            scopes=" ".join(sorted(scopes)),
            quota_bytes=quota_bytes,
            quota_active_uploads=quota_active_uploads,
            created_at=record.created_at,
        )
    )
    return record, key


def list_all(connection: Connection) -> list[ApiKey]:
    rows = connection.execute(select(api_keys).order_by(api_keys.c.created_at))
    return [_from_row(row) for row in rows]


def revoke(connection: Connection, key_id: str) -> bool:
    changed = connection.execute(
        update(api_keys)
        .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return bool(changed.rowcount)


def _find(connection: Connection, key_id: str) -> tuple[ApiKey, str] | None:
    row = connection.execute(
        select(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
    ).first()
    return (_from_row(row), row.key_hash) if row is not None else None


def _any_active(connection: Connection) -> bool:
    return (
        connection.execute(select(api_keys.c.id).where(api_keys.c.revoked_at.is_(None)).limit(1)).first()
        is not None
    )


class ApiKeyDirectory:
    """Looks presented keys up, caching what it found (and what it did not) briefly."""

    def __init__(self, db: Database, cache_seconds: float) -> None:
        self.db = db
        self.cache_seconds = cache_seconds
        self._found: OrderedDict[str, tuple[float, tuple[ApiKey, str] | None]] = OrderedDict()
        self._any: tuple[float, bool] = (float("-inf"), False)

    async def find(self, presented: str) -> ApiKey | None:
        """The live key ``presented`` is, or None (unknown, revoked, or not a key of ours)."""
        key_id = id_of(presented)
        if key_id is None:
            return None
        now = time.monotonic()
        cached = self._found.get(key_id)
        if cached is not None and now - cached[0] < self.cache_seconds:
            found = cached[1]
        else:
            found = await self.db.run(lambda c: _find(c, key_id))
            self._found[key_id] = (now, found)
            self._found.move_to_end(key_id)
            while len(self._found) > CACHE_ENTRIES:
                self._found.popitem(last=False)
        if found is None or not hmac.compare_digest(found[1], key_hash(presented)):
            return None
        return found[0]

    async def any_active(self) -> bool:
        """Whether any key exists: then callers without credentials are refused."""
        now = time.monotonic()
        if now - self._any[0] >= self.cache_seconds:
            self._any = (now, await self.db.run(_any_active))
        return self._any[1]
