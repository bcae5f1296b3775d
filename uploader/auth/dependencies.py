"""The principal of a request, from one of three sources: API keys kept in the database,
the bootstrap keys of ``UPLOADER_API_KEYS``, and JWTs. Every route takes it through
``CurrentPrincipal`` (or an alias that also requires a scope)."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from uploader.auth.api_keys import ApiKeyDirectory, id_of
from uploader.auth.principal import ANONYMOUS, DELETE, OWNER_SCOPES, READ, UPLOAD, Principal
from uploader.db.engine import Database
from uploader.hooks.http import current_request
from uploader.kit.errors import ProblemError
from uploader.settings import Settings

if TYPE_CHECKING:
    from uploader.auth.tokens import TokenVerifier

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError("auth.unauthorized", detail, headers=_CHALLENGE)


def presented_credential(request: Request) -> tuple[str, str] | None:
    """(where, credential): ``Authorization: Bearer``, ``X-API-Key``, or on GET requests
    only ``?access_token=`` (EventSource and ``<img>`` cannot send headers)."""
    # Another scheme (a proxy's Basic credentials, say) is not ours to judge: it is as if
    # none was sent, so an open server stays open behind such a proxy.
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credential.strip():
        return "bearer", credential.strip()
    key = request.headers.get("x-api-key")
    if key:
        return "key", key.strip()
    if request.method == "GET":
        token = request.query_params.get("access_token")
        if token:
            return "bearer", token
    return None


class Authenticator:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.bootstrap = {key.encode(): name for key, name in settings.api_keys.items()}
        # PyJWT (and cryptography, ~15 MiB) is imported only where tokens are configured.
        self.tokens: TokenVerifier | None = None
        if settings.jwt_secret is not None or settings.jwt_jwks_url:
            from uploader.auth.tokens import TokenVerifier

            self.tokens = TokenVerifier(settings)
        self.keys = ApiKeyDirectory(db, settings.api_key_cache_seconds)

    async def required(self) -> bool:
        """Whether a caller must present credentials: as set, or else once any source of
        them is configured (a bootstrap key, a JWT key, or a key in the database)."""
        if self.settings.auth_required is not None:
            return self.settings.auth_required
        if self.bootstrap or self.tokens is not None:
            return True
        return await self.keys.any_active()

    async def authenticate(self, request: Request) -> Principal:
        presented = presented_credential(request)
        if presented is None:
            if await self.required():
                raise _unauthorized("send an API key or token as 'Authorization: Bearer <credential>'")
            return Principal(ANONYMOUS, OWNER_SCOPES)
        where, credential = presented
        if id_of(credential) is not None:
            key = await self.keys.find(credential)
            if key is None:
                raise _unauthorized("the API key is unknown or revoked")
            return key.as_principal()
        if where == "bearer" and credential.count(".") == 2:  # the shape of a JWT
            if self.tokens is None:
                raise ProblemError(
                    "auth.invalid_token",
                    "this server accepts no tokens (no JWT key is configured)",
                    _CHALLENGE,
                )
            return await self.tokens.verify(credential)
        encoded = credential.encode()
        for key_bytes, name in self.bootstrap.items():
            if hmac.compare_digest(key_bytes, encoded):
                return Principal(name, OWNER_SCOPES, source="key")
        raise _unauthorized("the API key is unknown or revoked")


async def current_principal(request: Request) -> Principal:
    """Every request has exactly one principal; uploads belong to it. The request is kept
    for the blocking hooks, which tell the application who asked (``hooks/http.py``)."""
    current_request.set(request)
    authenticator: Authenticator = request.app.state.auth
    return await authenticator.authenticate(request)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def requires(*scopes: str) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency: the principal, which must have one of ``scopes`` (403 otherwise)."""

    async def principal_with_scope(request: Request) -> Principal:
        principal = await current_principal(request)
        principal.require(*scopes)
        return principal

    return principal_with_scope


Uploading = Annotated[Principal, Depends(requires(UPLOAD))]
Reading = Annotated[Principal, Depends(requires(READ))]
Deleting = Annotated[Principal, Depends(requires(DELETE))]
