"""Per-upload locks across API processes, on Redis.

Inside a process the in-process locker still serialises requests (and interrupts a
holder directly). Across processes a lease key says who writes; a request that wants a
held upload publishes the upload id on a channel, and the process holding the lease
interrupts its request, which records what it received and lets go, as within one
process. A request still waiting for the lease is never interrupted by such a message
(its own among them).

The lease is short and renewed often, so a crashed process's uploads are free again
within seconds. A holder whose lease could have run out (renewals failing) or was taken
(its key deleted, Redis restarted without persistence) is told so and stops before its
next write; its generation, taken with the lease, fences whatever it still tries to
record.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from uploader.kit.errors import DependencyUnavailable
from uploader.kit.ids import CountedIds
from uploader.kit.logging import get_logger
from uploader.kit.redis import redis_client
from uploader.kit.resp import HotPath, LeanRedis
from uploader.kit.tasks import cancel_until_done
from uploader.observability import metrics
from uploader.uploads.locks import LocalLocker, LockHolder, UploadLocked

log = get_logger(__name__)

# Takes the lease and, with it, a generation: Redis's clock in microseconds, and always
# above the last one given, so it grows even across a restart that lost every key.
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local last = tonumber(redis.call('GET', KEYS[2]) or '0')
  local generation = math.max(now, last + 1)
  redis.call('SET', KEYS[2], string.format('%.0f', generation))
  return string.format('%.0f', generation)
end
return false
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_new_token = CountedIds()  # a lease's token: only its holder may renew or release it

# A lease counts as ours for this share of its length after a renewal was sent.
_SAFE_SHARE = 0.8


class RedisLocker:
    distributed = True

    def __init__(
        self, url: str, prefix: str, timeout: float, lease_seconds: float = 5.0, lean: LeanRedis | None = None
    ) -> None:
        self.redis: Redis = redis_client(url)
        self._hot = HotPath(self.redis, url, lean)  # taking and releasing: every write does
        self.prefix = prefix
        self.timeout = timeout
        self.lease_seconds = lease_seconds
        self.lease_ms = int(lease_seconds * 1000)
        self.local = LocalLocker(timeout)
        self.channel = f"{prefix}:lock-release"
        self._generation_key = f"{prefix}:lock-generation"
        self._acquire = self._hot.script(_ACQUIRE)
        self._release = self._hot.script(_RELEASE)
        self._renew = self.redis.register_script(_RENEW)
        self._listener: asyncio.Task[None] | None = None
        self._leased: dict[str, LockHolder] = {}  # holders whose Redis lease is taken

    def _key(self, upload_id: str) -> str:
        return f"{self.prefix}:lock:{upload_id}"

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        """Release requests for the uploads held here; resubscribes after Redis comes back."""
        while True:
            pubsub: Any = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        holder = self._leased.get(message["data"].decode())
                        if holder is not None:
                            holder.interrupt()
            except RedisError as exc:
                log.warning("lock.listener_lost", error=str(exc)[:200])
                await asyncio.sleep(1)
            finally:
                with contextlib.suppress(RedisError):
                    await pubsub.aclose()

    async def close(self) -> None:
        if self._listener is not None:
            await cancel_until_done(self._listener)
        await self._hot.close()
        await self.redis.aclose()

    @asynccontextmanager
    async def hold(
        self, upload_id: str, *, interrupt: bool = True, patience: float | None = None
    ) -> AsyncIterator[LockHolder]:
        async with self.local.hold(upload_id, interrupt=interrupt, patience=patience) as holder:
            key = self._key(upload_id)
            token = _new_token()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + (self.timeout if patience is None else patience)
            waited_from: float | None = None
            while True:
                sent = time.monotonic()
                try:
                    generation = await self._acquire(
                        keys=[key, self._generation_key], args=[token, self.lease_ms]
                    )
                    if generation is not None:
                        break
                    if waited_from is None:
                        waited_from = loop.time()
                        metrics.LOCK_WAITS.inc()
                    # Held by another process: ask it to let go, then try again shortly.
                    if interrupt:
                        await self.redis.publish(self.channel, upload_id)
                except RedisError as exc:
                    raise DependencyUnavailable("redis", str(exc)) from exc
                if loop.time() > deadline:
                    metrics.LOCK_WAIT_DURATION.observe(loop.time() - (waited_from or deadline))
                    raise UploadLocked(upload_id)
                await asyncio.sleep(0.05)
            if waited_from is not None:
                metrics.LOCK_WAIT_DURATION.observe(loop.time() - waited_from)
            holder.generation = int(generation)
            holder.valid_until = sent + self.lease_seconds * _SAFE_SHARE
            self._leased[upload_id] = holder
            # Most writes end before the first renewal is due: the task that renews is
            # started only then, and a write that ended sooner only cancels a timer.
            renewer: asyncio.Task[None] | None = None

            def start_renewing() -> None:
                nonlocal renewer
                if self._leased.get(upload_id) is holder:
                    renewer = asyncio.create_task(self._keep(upload_id, key, token, holder))

            first_renewal = loop.call_later(self.lease_seconds / 5, start_renewing)
            try:
                yield holder
            finally:
                # Leaving ``_leased`` ends the renewer too, not only its cancellation: on
                # Python 3.11 the Redis client's asyncio.wait_for drops a cancellation that
                # comes as a command completes, and a renewer left running held the upload
                # for good.
                self._leased.pop(upload_id, None)
                first_renewal.cancel()
                try:
                    if renewer is not None:
                        renewer.cancel()
                        await asyncio.wait({renewer}, timeout=self.lease_seconds)
                finally:
                    with contextlib.suppress(RedisError):  # otherwise the lease simply runs out
                        await self._release(keys=[key], args=[token])

    async def _keep(self, upload_id: str, key: str, token: str, holder: LockHolder) -> None:
        """Extends the lease while the request holds it, now and every fifth of the lease;
        a crashed process's lease runs out."""
        while True:
            if self._leased.get(upload_id) is not holder:
                return  # released
            sent = time.monotonic()
            try:
                renewed = await self._renew(keys=[key], args=[token, self.lease_ms])
            except RedisError as exc:
                log.warning("lock.renew_failed", key=key, error=str(exc)[:200])
                if holder.valid_until is not None and time.monotonic() >= holder.valid_until:
                    log.warning("lock.lost", key=key, reason="lease ran out")
                    holder.lose()
                    return
            else:
                if not renewed:
                    log.warning("lock.lost", key=key, reason="lease taken")
                    holder.lose()
                    return
                holder.valid_until = sent + self.lease_seconds * _SAFE_SHARE
            await asyncio.sleep(self.lease_seconds / 5)

    async def request_release(self, upload_id: str, wait_seconds: float) -> None:
        if self.local.holder(upload_id) is not None:
            await self.local.request_release(upload_id, wait_seconds)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        try:
            key = self._key(upload_id)
            if not await self.redis.exists(key):
                return
            await self.redis.publish(self.channel, upload_id)
            while loop.time() < deadline and await self.redis.exists(key):  # noqa: ASYNC110 - the key is in Redis
                await asyncio.sleep(0.05)
        except RedisError:
            return  # the caller reads the recorded offset all the same

    def interrupt_all(self) -> None:
        self.local.interrupt_all()
