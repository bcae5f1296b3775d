"""``GET /metrics``: the Prometheus text format, behind ``UPLOADER_METRICS_TOKEN`` if set."""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import func, select
from starlette.responses import Response

from uploader.db.models import UploadState, uploads, webhook_outbox
from uploader.health.router import dependency_checks
from uploader.kit.errors import ProblemError
from uploader.kit.logging import get_logger
from uploader.observability import metrics
from uploader.webhooks.outbox import STATUSES

log = get_logger(__name__)
router = APIRouter()

READ_EVERY_SECONDS = 5.0  # scrapes in between reuse the values read last
READ_TIMEOUT_SECONDS = 2.0  # a scrape answers even when the database or Redis is slow


class ScrapedValues:
    """Values counted elsewhere (the database, the Celery queue in Redis), read when
    scraped and at most every ``READ_EVERY_SECONDS``, each read bounded in time."""

    def __init__(self) -> None:
        self._read_at = -READ_EVERY_SECONDS
        self._lock = asyncio.Lock()

    async def refresh(self, state: Any) -> None:
        """Read again, unless read within ``READ_EVERY_SECONDS``; ``state`` is the app's."""
        async with self._lock:
            if time.monotonic() - self._read_at < READ_EVERY_SECONDS:
                return
            self._read_at = time.monotonic()
            runtime = state.runtime
            await self._read("readiness", self._read_readiness(state))
            await self._read("database", self._read_database(runtime))
            redis = getattr(runtime.locker, "redis", None)
            if redis is not None and runtime.settings.processing == "celery":
                await self._read("redis", self._read_queue(runtime, redis))

    @staticmethod
    async def _read_readiness(state: Any) -> None:
        checks = await dependency_checks(state)
        for dependency, outcome in checks.items():
            metrics.DEPENDENCY_UP.labels(dependency).set(1 if outcome == "ok" else 0)
        draining = getattr(state, "draining", False)
        metrics.READY.set(0 if draining or any(outcome != "ok" for outcome in checks.values()) else 1)

    @staticmethod
    async def _read(source: str, read: Any) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT_SECONDS):
                await read
        except Exception as exc:  # the last values stay; the counter says they are old
            metrics.SCRAPE_ERRORS.labels(source).inc()
            log.warning("metrics.read_failed", source=source, error=f"{type(exc).__name__}: {exc}"[:300])

    @staticmethod
    async def _read_database(runtime: Any) -> None:
        def counts(connection: Any) -> tuple[list[Any], list[Any]]:
            by_state = connection.execute(select(uploads.c.state, func.count()).group_by(uploads.c.state))
            by_status = connection.execute(
                select(webhook_outbox.c.status, func.count()).group_by(webhook_outbox.c.status)
            )
            return list(by_state), list(by_status)

        by_state, by_status = await runtime.db.run(counts)
        states = dict.fromkeys((state.value for state in UploadState), 0) | dict(by_state)
        for state, count in states.items():
            metrics.UPLOADS_BY_STATE.labels(state).set(count)
        if runtime.settings.webhook_url:
            statuses = dict.fromkeys(STATUSES, 0) | dict(by_status)
            for status, count in statuses.items():
                metrics.WEBHOOK_OUTBOX.labels(status).set(count)

    @staticmethod
    async def _read_queue(runtime: Any, redis: Any) -> None:
        settings = runtime.settings
        queue = settings.task_queue
        # Celery's Redis transport keeps a queue's priorities in lists of their own.
        names = [queue, *(f"{queue}\x06\x16{priority}" for priority in (3, 6, 9))]
        prefix = f"{settings.redis_prefix}:celery:"
        depths = await asyncio.gather(*(redis.llen(prefix + name) for name in names))
        metrics.QUEUE_DEPTH.labels(queue).set(sum(depths))


@router.get("/metrics", include_in_schema=False)
async def metrics_endpoint(request: Request) -> Response:
    state = request.app.state
    settings = state.settings
    if not settings.metrics:
        raise ProblemError("request.not_found", "metrics are turned off (UPLOADER_METRICS=false)")
    if settings.metrics_token is not None:
        expected = f"Bearer {settings.metrics_token.get_secret_value()}".encode()
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise ProblemError(
                "auth.unauthorized",
                "/metrics needs Authorization: Bearer <UPLOADER_METRICS_TOKEN>",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
    await state.scraped.refresh(state)
    return Response(generate_latest(metrics.registry()), media_type=CONTENT_TYPE_LATEST)
