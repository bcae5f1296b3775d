"""Per-upload locks across API processes, on Redis.

Inside a process the in-process locker still serialises requests (and interrupts a
holder directly). Across processes a lease key says who writes; a request that wants a
held upload publishes the upload id on a channel, and the process holding it interrupts
its request, which records what it received and lets go, as within one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio import Redis

from uploader.kit.logging import get_logger
from uploader.uploads.locks import LocalLocker, LockHolder, UploadLocked

log = get_logger(__name__)

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class RedisLocker:
    def __init__(self, url: str, prefix: str, timeout: float, lease_seconds: float = 30.0) -> None:
        self.redis: Redis = Redis.from_url(url)
        self.prefix = prefix
        self.timeout = timeout
        self.lease_ms = int(lease_seconds * 1000)
        self.local = LocalLocker(timeout)
        self.channel = f"{prefix}:lock-release"
        self._release = self.redis.register_script(_RELEASE)
        self._renew = self.redis.register_script(_RENEW)
        self._listener: asyncio.Task[None] | None = None

    async def start(self) -> None:
        pubsub: Any = self.redis.pubsub()
        await pubsub.subscribe(self.channel)
        self._listener = asyncio.create_task(self._listen(pubsub))

    async def _listen(self, pubsub: Any) -> None:
        try:
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    self.local.interrupt(message["data"].decode())
        finally:
            await pubsub.aclose()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self.redis.aclose()

    @asynccontextmanager
    async def hold(self, upload_id: str) -> AsyncIterator[LockHolder]:
        async with self.local.hold(upload_id) as holder:
            key = f"{self.prefix}:lock:{upload_id}"
            token = secrets.token_hex(8)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.timeout
            while not await self.redis.set(key, token, nx=True, px=self.lease_ms):
                # Held by another process: ask it to let go, then try again shortly.
                await self.redis.publish(self.channel, upload_id)
                if loop.time() > deadline:
                    raise UploadLocked(upload_id)
                await asyncio.sleep(0.05)
            renewer = asyncio.create_task(self._keep(key, token))
            try:
                yield holder
            finally:
                renewer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewer
                await self._release(keys=[key], args=[token])

    async def _keep(self, key: str, token: str) -> None:
        """Extends the lease while the request runs; a crashed process's lease runs out."""
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            if not await self._renew(keys=[key], args=[token, self.lease_ms]):
                log.warning("lock.lost", key=key)
                return

    def interrupt_all(self) -> None:
        self.local.interrupt_all()
