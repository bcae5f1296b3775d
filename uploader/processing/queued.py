"""The full stack: completed uploads and outbox drains become Celery tasks.

Sending a task is a blocking Redis call, so it runs in a thread. A task that could not
be sent (Redis down) is not lost: the upload stays ``received`` and beat's sweep sends
it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from uploader.db.models import Upload
from uploader.kit.logging import get_logger
from uploader.observability.request_ids import TASK_REQUEST_ID, current_request_id
from uploader.processing.celery_app import PROCESS_TASK, WEBHOOKS_TASK
from uploader.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

log = get_logger(__name__)


class QueuedProcessor:
    head_bytes = 0  # the workers process every upload, from storage

    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    def processed_from_head(self, upload: Upload, head: bytes) -> dict[str, Any] | None:
        return None

    async def announce_processed(self, upload: Upload) -> None:
        return None

    async def submit(self, upload: Upload) -> None:
        await send_task(self.app, PROCESS_TASK, upload.id, self.settings)

    async def resume_pending(self) -> None:
        return None  # beat's sweep sends work left behind

    async def close(self) -> None:
        return None


def queued_drain(app: Celery, settings: Settings) -> Callable[[], Awaitable[None]]:
    """A wake-up for the full stack's outbox: a task that drains it. Lost when the broker
    is down, which costs nothing but time: beat sends one every poll interval."""

    async def wake() -> None:
        await send_task(app, WEBHOOKS_TASK, None, settings)

    return wake


async def send_task(app: Celery, name: str, argument: Any, settings: Settings) -> None:
    """Send task ``name`` (with ``argument``, unless None)."""
    args = [] if argument is None else [argument]
    request_id = current_request_id.get()
    headers = {TASK_REQUEST_ID: request_id} if request_id is not None else None
    try:
        await asyncio.to_thread(app.send_task, name, args=args, queue=settings.task_queue, headers=headers)
    except Exception as exc:  # the broker is down: the sweep sends it later
        log.error("task.send_failed", task=name, error=str(exc))
