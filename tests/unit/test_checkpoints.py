"""Checkpoints recorded beside a transfer: in order, the latest last, failures not lost."""

from __future__ import annotations

import asyncio

import pytest

from uploader.storage.base import CheckpointRecorder


async def test_offsets_are_recorded_in_order_and_the_latest_last() -> None:
    recorded: list[int] = []
    release = asyncio.Event()

    async def slow_checkpoint(offset: int) -> None:
        await release.wait()
        recorded.append(offset)

    recorder = CheckpointRecorder(slow_checkpoint)
    for offset in (4, 8, 12, 16):  # the transfer goes on while the first record waits
        recorder.record(offset)
        await asyncio.sleep(0)
    release.set()
    await recorder.finish()
    assert recorded == [4, 16]


async def test_a_failed_record_surfaces_when_the_write_finishes() -> None:
    async def broken_checkpoint(offset: int) -> None:
        raise RuntimeError("database away")

    recorder = CheckpointRecorder(broken_checkpoint)
    recorder.record(4)
    await asyncio.sleep(0)
    recorder.record(8)  # does not raise, and does not hide the failure
    with pytest.raises(RuntimeError, match="database away"):
        await recorder.finish()
