"""JSON Web Tokens (PyJWT): HS256 with a shared secret, RS256 and ES256 with keys from a
JWKS URL; upload tokens carry their own limits in an ``uploader`` claim.

Every defect of a token is a ``401`` with a stable code, never a 500; a JWKS that cannot
be fetched is ``503 auth.unavailable``, never an accepted token.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from datetime import timedelta
from typing import Any

import httpx
import jwt
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from uploader.auth.principal import DEFAULT_TOKEN_SCOPES, Principal, TokenLimits, parse_scopes
from uploader.kit.errors import ProblemError
from uploader.kit.logging import get_logger
from uploader.settings import Settings

log = get_logger(__name__)

MAX_TOKEN_BYTES = 8192
HMAC_ALGORITHMS = ("HS256",)
PUBLIC_KEY_ALGORITHMS = ("RS256", "ES256")
# A kid the cached JWKS does not know sends for the keys again, at most this often.
JWKS_REFETCH_SECONDS = 10.0
# Tokens already verified, kept until they expire: a client sends the same token with every
# PATCH of an upload, and checking it again each time cost about 70 µs of CPU.
VERIFIED_CACHE_ENTRIES = 10_000


class UploaderClaim(BaseModel):
    """The ``uploader`` claim of an upload token."""

    model_config = ConfigDict(extra="forbid", strict=True)

    max_size: StrictInt | None = Field(default=None, gt=0)
    types: list[StrictStr] | None = Field(default=None, min_length=1, max_length=64)
    max_files: StrictInt | None = Field(default=None, gt=0)
    metadata: dict[StrictStr, StrictStr] | None = Field(default=None, max_length=64)


class Claims(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    sub: StrictStr = Field(min_length=1, max_length=200)
    exp: StrictInt | float
    jti: StrictStr | None = Field(default=None, min_length=1, max_length=255)
    scope: StrictStr | None = None
    uploader: UploaderClaim | None = None


def _invalid(detail: str) -> ProblemError:
    return ProblemError(
        "auth.invalid_token", detail, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
    )


class JwksKeys:
    """The keys at a JWKS URL: cached, fetched again after ``cache_seconds`` and when a
    token names a kid the cache does not have, but never more often than every
    ``JWKS_REFETCH_SECONDS`` (a stream of tokens with made-up kids costs no fetches).

    While the JWKS cannot be fetched, keys fetched before go on serving; a token whose key
    is not among them is ``503 auth.unavailable``, as it may be signed with a new key."""

    def __init__(self, url: str, cache_seconds: float) -> None:
        self.url = url
        self.cache_seconds = cache_seconds
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")  # the last fetch that worked
        self._attempted_at = float("-inf")  # the last fetch tried
        self._error: str | None = None  # why the last fetch failed, if it did
        self._lock = asyncio.Lock()

    def _find(self, kid: str | None) -> jwt.PyJWK | None:
        key = self._keys.get(kid)
        if key is None and kid is None and len(self._keys) == 1:
            key = next(iter(self._keys.values()))  # one key, and a token that names none
        return key

    async def key_for(self, kid: str | None) -> jwt.PyJWK:
        due = time.monotonic() - self._fetched_at > self.cache_seconds
        if due or self._find(kid) is None:
            await self._refresh()
        key = self._find(kid)
        if key is not None:
            return key
        if self._error is not None:
            raise ProblemError(
                "auth.unavailable", "the keys to check tokens cannot be fetched", {"Retry-After": "5"}
            )
        raise _invalid(f"no key {kid!r} in the JWKS" if kid else "the token names no kid")

    async def _refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._attempted_at <= JWKS_REFETCH_SECONDS:
                return  # tried a moment ago (perhaps by a request that held the lock)
            self._attempted_at = time.monotonic()
            try:
                async with httpx.AsyncClient(timeout=5.0) as client:
                    response = await client.get(self.url)
                    response.raise_for_status()
                entries = response.json().get("keys", [])
                keys: dict[str | None, jwt.PyJWK] = {}
                for entry in entries:
                    if entry.get("use", "sig") != "sig":
                        continue
                    try:
                        keys[entry.get("kid")] = jwt.PyJWK(entry)
                    except jwt.PyJWTError as exc:
                        log.warning("auth.jwks_key_skipped", kid=entry.get("kid"), error=str(exc))
            except (httpx.HTTPError, ValueError, AttributeError, TypeError) as exc:
                self._error = str(exc)[:300] or type(exc).__name__
                log.warning(
                    "auth.jwks_unavailable", url=self.url, error=self._error, cached_keys=len(self._keys)
                )
                return
            self._keys, self._fetched_at, self._error = keys, time.monotonic(), None


class TokenVerifier:
    def __init__(self, settings: Settings) -> None:
        self.secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self.leeway = settings.jwt_leeway_seconds
        self.jwks = (
            JwksKeys(settings.jwt_jwks_url, settings.jwt_jwks_cache_seconds)
            if settings.jwt_jwks_url
            else None
        )
        self._verified: OrderedDict[str, tuple[float, Principal]] = OrderedDict()

    async def verify(self, token: str) -> Principal:
        cached = self._verified.get(token)
        if cached is not None:
            if time.time() < cached[0]:
                return cached[1]
            del self._verified[token]
        principal, expires = await self._verify(token)
        self._verified[token] = (expires, principal)
        while len(self._verified) > VERIFIED_CACHE_ENTRIES:
            self._verified.popitem(last=False)
        return principal

    async def _verify(self, token: str) -> tuple[Principal, float]:
        """The token's principal, and until when (its exp, with the leeway) it holds."""
        if len(token) > MAX_TOKEN_BYTES:
            raise _invalid(f"the token is longer than {MAX_TOKEN_BYTES} bytes")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _invalid("the token is not a well-formed JWT") from None
        algorithm = header.get("alg")
        key: Any
        if algorithm in HMAC_ALGORITHMS and self.secret is not None:
            key, allowed = self.secret, list(HMAC_ALGORITHMS)
        elif algorithm in PUBLIC_KEY_ALGORITHMS and self.jwks is not None:
            kid = header.get("kid")
            if kid is not None and not isinstance(kid, str):
                raise _invalid("kid must be a string")
            jwk = await self.jwks.key_for(kid)
            if jwk.algorithm_name != algorithm:
                raise _invalid(f"key {kid!r} is not a {algorithm} key")
            key, allowed = jwk.key, [algorithm]
        else:
            raise _invalid(f"tokens signed with {algorithm!r} are not accepted here")
        try:
            payload = jwt.decode(
                token,
                key,
                algorithms=allowed,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "sub"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise ProblemError("auth.token_expired", "the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise ProblemError("auth.token_expired", "the token is not valid yet (nbf)") from None
        except jwt.PyJWTError as exc:
            raise _invalid(str(exc)[:200]) from None
        return principal_of(payload), float(payload["exp"]) + self.leeway


def principal_of(payload: dict[str, Any]) -> Principal:
    try:
        claims = Claims.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise _invalid(f"claims of the wrong shape: {problems}") from None
    try:
        scopes = DEFAULT_TOKEN_SCOPES if claims.scope is None else parse_scopes(claims.scope)
    except ValueError as exc:
        raise _invalid(str(exc)) from None
    limits = None
    if claims.uploader is not None:
        claim = claims.uploader
        if claim.max_files is not None and claims.jti is None:
            raise _invalid("a token with max_files needs a jti claim to count its files by")
        limits = TokenLimits(
            max_size=claim.max_size,
            types=tuple(claim.types) if claim.types else None,
            max_files=claim.max_files,
            token_id=claims.jti,
            expires_at=float(claims.exp),
            metadata=dict(claim.metadata or {}),
        )
    return Principal(claims.sub, scopes, limits, source="token")


def mint_token(
    secret: str,
    subject: str,
    *,
    ttl: timedelta,
    scopes: frozenset[str] | None = None,
    max_size: int | None = None,
    types: list[str] | None = None,
    max_files: int | None = None,
    metadata: dict[str, str] | None = None,
    issuer: str | None = None,
    audience: str | None = None,
) -> str:
    """An HS256 upload token, as a backend would mint one."""
    import secrets as random

    now = int(time.time())
    payload: dict[str, Any] = {"sub": subject, "iat": now, "exp": now + int(ttl.total_seconds())}
    payload["jti"] = random.token_hex(12)
    if scopes is not None:
        payload["scope"] = " ".join(sorted(scopes))
    if issuer:
        payload["iss"] = issuer
    if audience:
        payload["aud"] = audience
    claim = {
        name: value
        for name, value in (
            ("max_size", max_size),
            ("types", types),
            ("max_files", max_files),
            ("metadata", metadata),
        )
        if value
    }
    if claim:
        payload["uploader"] = claim
    return jwt.encode(payload, secret, algorithm="HS256")
