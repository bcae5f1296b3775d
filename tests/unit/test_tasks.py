"""Ending a background task: again and again until it ends, and never waiting for good."""

from __future__ import annotations

import asyncio
import time

from uploader.kit.tasks import cancel_until_done


async def test_a_task_that_drops_cancellations_is_ended_by_the_next_one() -> None:
    dropped = 0

    async def drops_two() -> None:
        nonlocal dropped
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if dropped == 2:
                    raise
                dropped += 1  # as a read that completed with the cancellation

    task = asyncio.create_task(drops_two())
    await asyncio.sleep(0)
    assert await cancel_until_done(task, every=0.01)
    assert task.cancelled()
    assert dropped == 2


async def test_a_task_that_never_ends_is_left_after_the_patience() -> None:
    stop = False

    async def never_ends() -> None:
        while not stop:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(never_ends(), name="stubborn")
    await asyncio.sleep(0)
    started = time.monotonic()
    assert not await cancel_until_done(task, every=0.01, patience=0.2)
    assert 0.2 <= time.monotonic() - started < 1.0
    assert not task.done()
    stop = True  # let it go, so that the session's loop ends clean
    task.cancel()
    await asyncio.wait({task}, timeout=1)
    assert task.done()


async def test_a_task_that_failed_is_not_raised_by_its_ending() -> None:
    async def fails() -> None:
        raise RuntimeError("its own error")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0.01)
    assert await cancel_until_done(task)
