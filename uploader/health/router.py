"""Liveness and readiness."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import text
from starlette.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


async def dependency_checks(state: Any) -> dict[str, str]:
    """``ok`` or what went wrong, for the database, the storage and (when configured)
    Redis; ``state`` is the application's."""
    checks: dict[str, str] = {}
    try:
        await state.db.run(lambda session: session.execute(text("SELECT 1")))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        await state.uploads.store.check()
        checks["storage"] = "ok"
    except Exception as exc:
        checks["storage"] = f"error: {exc}"[:300]
    redis = getattr(state.runtime.locker, "redis", None)
    if redis is not None:
        try:
            await asyncio.wait_for(redis.ping(), 3)
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"error: {type(exc).__name__}"
    return checks


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """The database, the storage and (when configured) Redis answer, and the server is not
    stopping (from SIGTERM on, 503: a load balancer stops routing new requests here)."""
    state = request.app.state
    if getattr(state, "draining", False):
        return JSONResponse(
            {"status": "draining", "checks": {}}, status_code=503, headers={"Retry-After": "5"}
        )
    checks = await dependency_checks(state)
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
        headers={} if ready else {"Retry-After": "5"},
    )
