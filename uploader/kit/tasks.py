"""Ending background tasks that may not answer one cancellation."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel_until_done(task: asyncio.Task[Any], every: float = 0.05) -> None:
    """Cancel ``task`` and wait for it to end, cancelling it again every ``every`` seconds
    while it runs on. On Python 3.11 the Redis client's reads (``asyncio.wait_for`` and
    its timeouts) drop a cancellation that comes as a reply completes; a listener that
    lost it went on waiting for the next message, and its owner's ``close`` with it, for
    good. The task's own error, if it ended with one, is not raised here."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=every)
    if not task.cancelled():
        with contextlib.suppress(Exception):
            task.exception()  # retrieved: not logged as never retrieved
