"""Who a request acts for, what it may do, and the limits it carries."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from uploader.kit.errors import ProblemError

ANONYMOUS = "anonymous"

UPLOAD = "upload"  # create, append and terminate its own uploads
READ = "read"  # status, list, download and events of its own uploads
DELETE = "delete"  # delete its own finished uploads
ADMIN = "admin"  # every principal's uploads
ALL_SCOPES = frozenset({UPLOAD, READ, DELETE, ADMIN})
# Anonymous callers and API keys made without --scope may do everything to their own uploads.
OWNER_SCOPES = frozenset({UPLOAD, READ, DELETE})
# A token without a scope claim (OAuth 2's space-separated string).
DEFAULT_TOKEN_SCOPES = frozenset({UPLOAD, READ})


def parse_scopes(value: str) -> frozenset[str]:
    scopes = frozenset(value.split())
    unknown = scopes - ALL_SCOPES
    if unknown:
        raise ValueError(f"unknown scopes {sorted(unknown)}; known: {sorted(ALL_SCOPES)}")
    return scopes


def type_allowed(media_type: str | None, patterns: tuple[str, ...]) -> bool:
    """Whether a media type (parameters ignored) matches one of ``image/*``-style patterns."""
    if not media_type:
        return False
    bare = media_type.split(";", 1)[0].strip().lower()
    return any(fnmatch.fnmatchcase(bare, pattern.lower()) for pattern in patterns)


@dataclass(frozen=True, slots=True)
class TokenLimits:
    """What an upload token allows each upload it makes."""

    max_size: int | None = None
    types: tuple[str, ...] | None = None
    max_files: int | None = None
    token_id: str | None = None  # the token's jti: files are counted under it
    expires_at: float | None = None  # the token's exp, when its count may be forgotten
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Quota:
    """A principal's own quota (an API key's); None: the server's default."""

    bytes: int | None = None
    active_uploads: int | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    scopes: frozenset[str] = OWNER_SCOPES
    limits: TokenLimits | None = None
    quota: Quota = Quota()
    source: str = "anonymous"  # anonymous, key, token

    def has(self, scope: str) -> bool:
        return scope in self.scopes

    def require(self, *scopes: str) -> None:
        """At least one of ``scopes``, or ``403 auth.forbidden``."""
        if not any(scope in self.scopes for scope in scopes):
            wanted = " or ".join(repr(s) for s in scopes)
            raise ProblemError("auth.forbidden", f"this credential lacks the {wanted} scope")

    @property
    def owner_filter(self) -> str | None:
        """Whose uploads it reads: its own, or (admin) everyone's."""
        return None if ADMIN in self.scopes else self.name
