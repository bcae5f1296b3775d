"""The request body as the storage layer sees it: an async iterator that can be ended early.

A PATCH ends early when another request for the same upload asks for the lock (as tusd
does), when the server shuts down, when the client goes away, or when it sends nothing
for the idle timeout. The backend simply
sees a shorter stream and the service records what arrived.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

from starlette.requests import ClientDisconnect


class BodyTooLong(Exception):
    """More bytes arrived than the upload has room for."""


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...


class RequestBody:
    def __init__(self, source: AsyncIterator[bytes], limit: int, hasher: Hasher | None = None):
        self._source = source
        self.limit = limit
        self.hasher = hasher
        self.received = 0
        self.interrupted = False
        self.disconnected = False
        self._reader: asyncio.Task[Any] | None = None
        self._waiting = False
        self.idle = False  # ended because no byte arrived for the idle timeout
        self._watch: asyncio.TimerHandle | None = None

    def __aiter__(self) -> RequestBody:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self.interrupted:
                raise StopAsyncIteration
            self._reader = asyncio.current_task()
            self._waiting = True
            try:
                chunk = await anext(self._source)
            except asyncio.CancelledError:
                # Our own interrupt() cancelled the wait for more body: end the stream.
                if self.interrupted and self._reader is not None and self._reader.uncancel() == 0:
                    raise StopAsyncIteration from None
                raise
            except ClientDisconnect:
                self.disconnected = True
                raise StopAsyncIteration from None
            finally:
                self._waiting = False
            if not chunk:
                continue
            self.received += len(chunk)
            if self.received > self.limit:
                raise BodyTooLong(f"more than {self.limit} bytes")
            if self.hasher is not None:
                self.hasher.update(chunk)
            return chunk

    def watch_idle(self, seconds: float) -> None:
        """End the body when no byte arrives for ``seconds``. One timer looks every
        quarter of that (not a timeout per chunk, which would cost the hot path)."""
        loop = asyncio.get_running_loop()
        interval = seconds / 4

        def look(seen: int, quiet_since: float) -> None:
            now = loop.time()
            if self.received != seen:
                seen, quiet_since = self.received, now
            elif now - quiet_since >= seconds and self._waiting:
                self.idle = True
                self.interrupt()
                return
            self._watch = loop.call_later(interval, look, seen, quiet_since)

        self._watch = loop.call_later(interval, look, self.received, loop.time())

    def stop_watching(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    def interrupt(self) -> None:
        """Stop reading: the stream ends at the next chunk boundary, or now if waiting."""
        if self.interrupted:
            return
        self.interrupted = True
        if self._waiting and self._reader is not None:
            self._reader.cancel()


def has_body(headers: Mapping[str, str], content_length: int | None) -> bool:
    """Whether a request carries content: a positive length, or chunked transfer coding."""
    if content_length is not None:
        return content_length > 0
    return "chunked" in headers.get("transfer-encoding", "").lower()


async def empty_body() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator
