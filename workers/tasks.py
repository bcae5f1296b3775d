"""Celery tasks: each worker process runs one event loop and one set of async clients.

Task bodies are the same coroutines the embedded default awaits in the API process;
here they run on the worker process's own loop, built on its first task (after the
fork, never inherited) and closed when the process ends.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any, TypeVar

from celery import Celery, Task
from celery.signals import task_failure, task_retry, task_success, worker_process_shutdown

from uploader.db.models import UploadState, utcnow
from uploader.kit.logging import get_logger
from uploader.observability import metrics, metrics_server, tracing
from uploader.observability.request_ids import TASK_REQUEST_ID, current_request_id, sane_or_none
from uploader.processing.celery_app import PROCESS_TASK, SWEEP_TASK, WEBHOOKS_TASK, build_celery
from uploader.processing.pipeline import TRANSIENT_ERRORS, unavailable_reason
from uploader.runtime import Runtime
from uploader.settings import Settings
from uploader.uploads import repository

log = get_logger(__name__)
T = TypeVar("T")
RECEIVED_GRACE = timedelta(seconds=60)


class WorkerContext:
    """The per-process loop and runtime."""

    _current: WorkerContext | None = None

    def __init__(self, settings: Settings) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.runtime: Runtime = self.loop.run_until_complete(Runtime.start(settings, serves_requests=False))

    @classmethod
    def get(cls, settings: Settings) -> WorkerContext:
        if cls._current is None or cls._current.pid != os.getpid():
            cls._current = WorkerContext(settings)
        return cls._current

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(work)

    @classmethod
    def close_current(cls) -> None:
        context = cls._current
        if context is not None and context.pid == os.getpid():
            context.run(context.runtime.close())
            context.loop.close()
            cls._current = None


@worker_process_shutdown.connect  # type: ignore[untyped-decorator]
def _close_context(pid: int | None = None, **_: Any) -> None:
    WorkerContext.close_current()
    metrics_server.process_ended(pid or os.getpid())
    tracing.flush()


@task_success.connect  # type: ignore[untyped-decorator]
def _count_success(sender: Task | None = None, **_: Any) -> None:
    metrics.TASKS.labels(getattr(sender, "name", "unknown"), "succeeded").inc()


@task_retry.connect  # type: ignore[untyped-decorator]
def _count_retry(sender: Task | None = None, **_: Any) -> None:
    metrics.TASKS.labels(getattr(sender, "name", "unknown"), "retried").inc()


@task_failure.connect  # type: ignore[untyped-decorator]
def _count_failure(sender: Task | None = None, **_: Any) -> None:
    metrics.TASKS.labels(getattr(sender, "name", "unknown"), "failed").inc()


def build_worker_app(settings: Settings) -> Celery:
    app = build_celery(settings)

    @app.task(name=PROCESS_TASK, bind=True, max_retries=settings.task_max_retries)  # type: ignore[untyped-decorator]
    def process_upload(task: Task, upload_id: str) -> str | None:
        context = WorkerContext.get(settings)
        # The request that completed the upload: its id goes into this task's log lines
        # and the webhook events it writes.
        bound = current_request_id.set(sane_or_none(getattr(task.request, TASK_REQUEST_ID, None)))
        try:
            return context.run(context.runtime.pipeline.run(upload_id))
        except TRANSIENT_ERRORS as exc:
            retries = task.request.retries
            if retries >= settings.task_max_retries:
                context.run(context.runtime.pipeline.fail(upload_id, unavailable_reason(exc)))
                return UploadState.FAILED
            log.warning("processing.retry", upload_id=upload_id, attempt=retries + 1, error=str(exc))
            raise task.retry(exc=exc, countdown=settings.task_retry_backoff_seconds * 2**retries) from exc
        finally:
            current_request_id.reset(bound)

    @app.task(name=WEBHOOKS_TASK)  # type: ignore[untyped-decorator]
    def deliver_webhooks() -> int:
        """Drain the outbox: what is due now (retries come back with beat's next drain)."""
        context = WorkerContext.get(settings)
        webhooks = context.runtime.webhooks
        return context.run(webhooks.drain()) if webhooks is not None else 0

    @app.task(name=SWEEP_TASK)  # type: ignore[untyped-decorator]
    def sweep() -> dict[str, int]:
        context = WorkerContext.get(settings)
        return context.run(_sweep(app, context.runtime))

    return app


async def _sweep(app: Celery, runtime: Runtime) -> dict[str, int]:
    """Expire what is due, and send again work that was never picked up or was lost."""
    settings = runtime.settings
    expired = await runtime.service.expire_due()
    pruned = await runtime.service.prune_tombstones()
    orphans = await runtime.service.sweep_orphans()
    delivered_pruned = await runtime.webhooks.prune() if runtime.webhooks is not None else 0
    now = utcnow()
    lost_after = now - timedelta(seconds=settings.task_time_limit_seconds * 2)
    received = await runtime.db.run(
        lambda s: repository.stale_in_state(s, UploadState.RECEIVED, now - RECEIVED_GRACE, 100)
    )
    processing = await runtime.db.run(
        lambda s: repository.stale_in_state(s, UploadState.PROCESSING, lost_after, 100)
    )
    for upload in [*received, *processing]:
        await asyncio.to_thread(app.send_task, PROCESS_TASK, args=[upload.id], queue=settings.task_queue)
    resent = len(received) + len(processing)
    done = {
        "expired": expired,
        "resent": resent,
        "pruned": pruned,
        "orphans": orphans,
        "deliveries_pruned": delivered_pruned,
    }
    if any(done.values()):
        log.info("sweep.done", **done)
    return done
