"""Ending a background task: again and again until it ends, and never waiting for good."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.support import in_process_client
from uploader import app as app_module
from uploader.kit.tasks import cancel_until_done
from uploader.settings import Settings


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


async def test_the_app_stops_even_if_its_cleanup_loop_drops_a_cancellation(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded default's cleanup loop takes upload locks, in Redis when one is set; a
    cancellation dropped by the Redis client there sent the loop back to its hour-long
    sleep, and the shutdown waited on it for good."""
    running, dropped = asyncio.Event(), asyncio.Event()

    async def drops_the_first_cancellation(service: object, interval: float) -> None:
        running.set()
        try:
            await asyncio.sleep(3600)  # a Redis command in flight
        except asyncio.CancelledError:
            dropped.set()  # as a reply that completed with the cancellation
        await asyncio.sleep(interval)

    monkeypatch.setattr(app_module, "_cleanup_loop", drops_the_first_cancellation)
    settings = Settings(data_dir=tmp_path, database_url=sqlite_url, cleanup_interval_seconds=3600)

    stopping = 0.0

    async def start_and_stop() -> None:
        nonlocal stopping
        async with in_process_client(settings) as client:
            assert (await client.get("/healthz")).status_code == 200
            await running.wait()
            stopping = time.monotonic()

    # (Bounded, so that the failure is a failure and not a hang.)
    await asyncio.wait_for(start_and_stop(), timeout=10)
    assert dropped.is_set()
    assert time.monotonic() - stopping < 3
