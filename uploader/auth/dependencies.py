"""Resolves the principal of a request: anonymous by default, or by API key."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import Request

from uploader.kit.errors import ProblemError

ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Principal:
    name: str


def _presented_key(request: Request) -> str | None:
    authorization = request.headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.headers.get("x-api-key") or None


async def current_principal(request: Request) -> Principal:
    """Every request has exactly one principal; uploads belong to it."""
    api_keys: dict[str, str] = request.app.state.settings.api_keys
    if not api_keys:
        return Principal(ANONYMOUS)
    presented = _presented_key(request)
    if presented is not None:
        for key, name in api_keys.items():
            if hmac.compare_digest(key.encode(), presented.encode()):
                return Principal(name)
    raise ProblemError(
        "auth.unauthorized",
        "send an API key as 'Authorization: Bearer <key>'",
        headers={"WWW-Authenticate": "Bearer"},
    )
