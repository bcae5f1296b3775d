"""A hold of an upload ends, and its lease with it, even when the renewal task does not
end on its cancellation. On Python 3.11, ``asyncio.wait_for`` (which the Redis client
uses to send a command) returns the result and drops a cancellation that arrives as the
call completes; a renewer that went on renewing kept its upload locked for good, every
other writer answered 423 until the process was restarted (seen with three API processes
behind a proxy under load)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from typing import Any

import pytest

from uploader.uploads.redis_locks import RedisLocker


async def test_a_hold_ends_even_when_a_renewal_swallows_its_cancellation(redis_url: str) -> None:
    lease = 5.0  # renewed every second
    locker = RedisLocker(redis_url, f"test-{secrets.token_hex(4)}", timeout=2, lease_seconds=lease)
    await locker.start()
    real_renew = locker._renew
    renewing = asyncio.Event()
    failed = False

    async def renew_that_loses_a_cancellation(**kwargs: Any) -> Any:
        if failed:
            raise RuntimeError("the test failed: end the renewer, so the session can end")
        renewing.set()
        # The call completes as the cancellation comes: wait_for returns, on 3.11.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.3)
        return await real_renew(**kwargs)

    locker._renew = renew_that_loses_a_cancellation  # type: ignore[method-assign]

    left_at: list[float] = []

    async def hold_and_leave() -> None:
        async with locker.hold("upload-1"):
            await renewing.wait()  # leave while a renewal is under way
            left_at.append(time.monotonic())

    try:
        # (Not asyncio.timeout: a hold stuck in its exit would not answer its cancellation.)
        leaving = asyncio.create_task(hold_and_leave())
        done, _ = await asyncio.wait({leaving}, timeout=3 * lease)
        if not done:
            failed = True
            pytest.fail("the hold never ended")
        # The renewer saw the hold end at its next turn: the exit did not wait out a lease.
        assert time.monotonic() - left_at[0] < lease / 2
        assert not await locker.redis.exists(locker._key("upload-1")), "the lease outlived its hold"
        async with asyncio.timeout(1), locker.hold("upload-1", patience=0.1):
            pass  # free at once for the next writer
    finally:
        await locker.close()


async def test_a_hold_longer_than_its_lease_keeps_it_through_every_renewal(redis_url: str) -> None:
    lease = 1.0  # the first renewal is due after 0.2 s, then every 0.2 s
    locker = RedisLocker(redis_url, f"test-{secrets.token_hex(4)}", timeout=2, lease_seconds=lease)
    await locker.start()
    try:
        async with locker.hold("upload-1") as holder:
            for _ in range(6):  # three leases long
                await asyncio.sleep(lease / 2)
                holder.check()  # neither lost nor past its validity
                assert await locker.redis.pttl(locker._key("upload-1")) > lease * 1000 / 2
        assert not await locker.redis.exists(locker._key("upload-1"))
    finally:
        await locker.close()


async def test_closing_a_locker_ends_its_listener_even_mid_subscribe(redis_url: str) -> None:
    """The release listener subscribes as the locker starts. A close that comes while the
    subscription's reply is being read lost its cancellation in the Redis client (about one
    close in eight, closed within a few milliseconds of the start) and waited for good: a
    process that was told to stop never did."""
    stuck = 0
    for attempt in range(60):
        locker = RedisLocker(redis_url, f"test-{secrets.token_hex(4)}", timeout=2)
        await locker.start()
        await asyncio.sleep((attempt % 20) * 0.0003)  # from before the subscription to after it
        closing = asyncio.ensure_future(locker.close())
        done, _ = await asyncio.wait({closing}, timeout=2)
        if not done:
            stuck += 1
            listener = locker._listener
            assert listener is not None
            while not listener.done():  # end it anyway, so that the session can end
                listener.cancel()
                await asyncio.sleep(0.05)
            await closing
    assert stuck == 0, f"{stuck} of 60 closes waited for a listener that never ended"
