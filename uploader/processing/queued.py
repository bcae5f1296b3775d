"""The full stack: completed uploads and webhook deliveries become Celery tasks.

Sending a task is a blocking Redis call, so it runs in a thread. A task that could not
be sent (Redis down) is not lost: the upload stays ``received`` and beat's sweep sends
it again.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from uploader.db.models import Upload
from uploader.kit.logging import get_logger
from uploader.settings import Settings
from workers.celery_app import PROCESS_TASK, WEBHOOK_TASK

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


class QueuedWebhooks:
    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def dispatch(self, payload: dict[str, Any]) -> None:
        await send_task(self.app, WEBHOOK_TASK, payload, self.settings)

    async def close(self) -> None:
        return None


async def send_task(app: Celery, name: str, argument: Any, settings: Settings) -> None:
    try:
        await asyncio.to_thread(app.send_task, name, args=[argument], queue=settings.task_queue)
    except Exception as exc:  # the broker is down: the sweep sends it later
        log.error("task.send_failed", task=name, error=str(exc))
