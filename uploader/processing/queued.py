"""The full stack: completed uploads and outbox drains become Celery tasks, pushed onto
the queue from the event loop (``task_messages``). A task that could not be sent (Redis
down) is not lost: the upload stays ``received`` and beat's sweep sends it again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from uploader.db.models import Upload
from uploader.kit.logging import get_logger
from uploader.observability.request_ids import TASK_REQUEST_ID, current_request_id
from uploader.processing.celery_app import PROCESS_TASK, WEBHOOKS_TASK
from uploader.processing.task_messages import TaskSender

log = get_logger(__name__)


class QueuedProcessor:
    head_bytes = 0  # the workers process every upload, from storage

    def __init__(self, sender: TaskSender) -> None:
        self.sender = sender

    def processed_from_head(self, upload: Upload, head: bytes) -> dict[str, Any] | None:
        return None

    async def announce_processed(self, upload: Upload) -> None:
        return None

    async def submit(self, upload: Upload) -> None:
        await send_task(self.sender, PROCESS_TASK, upload.id)

    async def resume_pending(self) -> None:
        return None  # beat's sweep sends work left behind

    async def close(self) -> None:
        return None  # the sender is the runtime's: its worker processes send too


def queued_drain(sender: TaskSender) -> Callable[[], Awaitable[None]]:
    """A wake-up for the full stack's outbox: a task that drains it. Lost when the broker
    is down, which costs nothing but time: beat sends one every poll interval."""

    async def wake() -> None:
        await send_task(sender, WEBHOOKS_TASK, None)

    return wake


async def send_task(sender: TaskSender, name: str, argument: Any) -> None:
    """Send task ``name`` (with ``argument``, unless None)."""
    args = [] if argument is None else [argument]
    request_id = current_request_id.get()
    headers = {TASK_REQUEST_ID: request_id} if request_id is not None else None
    try:
        await sender.send(name, args, headers)
    except Exception as exc:  # the broker is down: the sweep sends it later
        log.error("task.send_failed", task=name, error=str(exc))
