"""Ending background tasks that may not answer one cancellation."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from uploader.kit.logging import get_logger

log = get_logger(__name__)


async def cancel_until_done(task: asyncio.Task[Any], every: float = 0.05, patience: float = 5.0) -> bool:
    """Cancel ``task`` and wait for it to end, cancelling it again every ``every`` seconds
    while it runs on; whether it ended. On Python 3.11 the Redis client's reads
    (``asyncio.wait_for`` and its timeouts) drop a cancellation that comes as a reply
    completes; a listener that lost it went on waiting for the next message, and its
    owner's ``close`` with it, for good. After ``patience`` seconds the caller goes on
    (closing what the task uses ends it, if anything does): a shutdown never hangs on
    one. The task's own error, if it ended with one, is not raised here."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + patience
    while not task.done():
        if loop.time() >= give_up:
            log.warning("task.not_ending", task=task.get_name(), seconds=patience)
            return False
        task.cancel()
        await asyncio.wait({task}, timeout=every)
    if not task.cancelled():
        with contextlib.suppress(Exception):
            task.exception()  # retrieved: not logged as never retrieved
    return True
