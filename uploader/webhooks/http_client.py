"""A small HTTP/1.1 client for webhook deliveries: POSTs to one receiver over a few
kept-alive connections, and reads back only the status.

The deliveries of a busy server are a POST or two per upload, on the API process's event
loop; a general client's work around each request showed in the many-small-uploads
figure (httpx cost 667 microseconds of CPU per POST on loopback, aiohttp 133). This one
is an asyncio protocol (no stream objects between the transport and the parser) that
does what deliveries need and no more: ``http`` and ``https``, answers with a
``Content-Length``, chunked or none (read to the close), no redirects (a 3xx is an
answer like any other), no proxies and no cookies.
"""

from __future__ import annotations

import asyncio
import math
import ssl
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any, cast
from urllib.parse import urlsplit

MAX_HEAD = 64 * 1024  # bytes of status line and headers we accept
MAX_BODY = 1024 * 1024  # an answer's body we read to keep the connection; longer ones close it


class ReceiverError(Exception):
    """No usable answer: the connection failed, closed, or the answer was not HTTP.
    ``answered``: the receiver did answer (not HTTP); the request is not sent again."""

    def __init__(self, message: str, *, answered: bool = False) -> None:
        super().__init__(message)
        self.answered = answered


class _Answer:
    """The answer being read: its status once the head is in, then its body's end."""

    def __init__(self) -> None:
        self.status = 0
        self.keep = False
        self.body_left: int | None = None  # bytes of body still to come; None: no head yet
        self.chunked = False
        self.to_close = False  # a body we do not read (no length, or too long): we close


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bool]] | None = None
        self.answer = _Answer()
        self.lost = False
        self.received_any = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            where = " in the middle of the answer" if self.received_any else ""
            error = ReceiverError(f"the connection closed{where}", answered=self.received_any)
            self.waiter.set_exception(error)

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        self.buffer += data
        try:
            self._advance()
        except ReceiverError as exc:
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(exc)
            self.close()

    def _advance(self) -> None:
        answer = self.answer
        if answer.body_left is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end > MAX_HEAD or (end < 0 and len(self.buffer) > MAX_HEAD):
                raise ReceiverError("the answer's headers are too long", answered=True)
            if end < 0:
                return
            self._read_head(bytes(self.buffer[:end]))
            del self.buffer[: end + 4]
        if not answer.to_close and answer.chunked:
            self._read_chunks()
        if answer.to_close:  # a body we will not read: the status is all, and the connection goes
            self._resolve(answer.status, keep=False)
            return
        if answer.chunked:
            return
        if len(self.buffer) < (answer.body_left or 0):
            return
        del self.buffer[: answer.body_left or 0]
        self._resolve(answer.status, keep=answer.keep and not self.buffer)

    def _resolve(self, status: int, *, keep: bool) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((status, keep))

    def _read_head(self, head: bytes) -> None:
        answer = self.answer
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise ReceiverError(f"not an HTTP answer: {lines[0][:80]!r}", answered=True)
        answer.status = int(code)
        fields: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        answer.keep = version == "HTTP/1.1" and fields.get("connection", "").lower() != "close"
        length = fields.get("content-length")
        if answer.status in (204, 304) or answer.status < 200:
            answer.body_left = 0
        elif "chunked" in fields.get("transfer-encoding", "").lower():
            answer.chunked, answer.body_left = True, 0
        elif length is not None and length.isdigit() and int(length) <= MAX_BODY:
            answer.body_left = int(length)
        else:
            answer.to_close, answer.body_left, answer.keep = True, 0, False

    def _read_chunks(self) -> None:
        """Consume whole chunks from the buffer; ``chunked`` turns False at the last one."""
        answer = self.answer
        while True:
            line_end = self.buffer.find(b"\r\n")
            if line_end < 0:
                return
            size_text = bytes(self.buffer[:line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text or b"0", 16)
            except ValueError:
                raise ReceiverError("a chunked answer that is not", answered=True) from None
            if size == 0:
                trailers_end = self.buffer.find(b"\r\n\r\n", line_end)
                if trailers_end < 0:
                    return
                del self.buffer[: trailers_end + 4]
                answer.chunked = False
                return
            if len(self.buffer) < line_end + 2 + size + 2:
                if size > MAX_BODY:
                    answer.keep, answer.to_close, answer.chunked = False, True, False
                return
            del self.buffer[: line_end + 2 + size + 2]

    def send(self, request: bytes) -> asyncio.Future[tuple[int, bool]]:
        """Send ``request``; the future of its answer's status (and whether the connection
        stays)."""
        assert self.transport is not None
        if self.lost:
            raise ReceiverError("the connection had closed")
        self.answer = _Answer()
        self.received_any = False
        waiter: asyncio.Future[tuple[int, bool]] = asyncio.get_running_loop().create_future()
        self.waiter = waiter
        self.transport.write(request)
        return waiter

    def expire(self, waiter: asyncio.Future[tuple[int, bool]]) -> None:
        """No answer in time: ``TimeoutError``, and the connection goes (an answer may
        still come: the connection is of no more use)."""
        if not waiter.done():
            waiter.set_exception(TimeoutError())
            self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _time_out(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class WebhookClient:
    def __init__(self, url: str, *, connections: int = 32) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.tls = ssl.create_default_context() if parts.scheme == "https" else None
        authority = parts.netloc.rsplit("@", 1)[-1]
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._prefix = f"POST {target} HTTP/1.1\r\nHost: {authority}\r\n".encode("latin-1")
        self._idle: list[_Connection] = []
        self._free = connections  # connections that may still be opened or lent
        self._queue: deque[asyncio.Future[None]] = deque()  # posts waiting for one
        # Waits for an answer or a connection, by their future, with their deadline and
        # what ends them then: one timer watches them all, set for the earliest. (A timer
        # per exchange, set and cancelled, cost a tenth of a delivery's CPU on asyncio's
        # own loop, in its heap of cancelled timers; less on uvloop.)
        self._watched: dict[asyncio.Future[Any], tuple[float, Callable[[], None]]] = {}
        self._watchdog: asyncio.TimerHandle | None = None
        self._watchdog_at = math.inf

    async def post(self, body: bytes, headers: bytes, within: float | None = None) -> int:
        """POST ``body`` with ``headers`` (``Name: value\\r\\n`` lines, rendered by the
        caller); the answer's status. Raises ``ReceiverError``, or ``TimeoutError`` when
        no answer came ``within`` that many seconds (a free connection, the connecting and
        the exchange all count)."""
        request = b"%s%sContent-Length: %d\r\n\r\n%s" % (self._prefix, headers, len(body), body)
        deadline = None if within is None else asyncio.get_running_loop().time() + within
        await self._take_slot(deadline)
        try:
            while True:
                reused = bool(self._idle)
                if reused:
                    connection = self._idle.pop()
                else:
                    async with asyncio.timeout_at(deadline):  # None: no bound
                        connection = await self._connect()
                try:
                    waiter = connection.send(request)
                    if deadline is not None:
                        self._watch(waiter, deadline, partial(connection.expire, waiter))
                    try:
                        status, keep = await waiter
                    finally:
                        self._watched.pop(waiter, None)
                except ReceiverError as exc:
                    connection.close()
                    if reused and not exc.answered:
                        continue  # a kept-alive connection the receiver had closed: a fresh one
                    raise
                except BaseException:  # a timeout or cancellation mid-exchange
                    connection.close()
                    raise
                if keep and not connection.lost:
                    self._idle.append(connection)
                else:
                    connection.close()
                return status
        finally:
            self._give_slot()

    async def _take_slot(self, deadline: float | None) -> None:
        """A connection of the ``connections`` allowed; waiting for one counts in the
        post's time."""
        if self._free > 0 and not self._queue:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(waiter)
        if deadline is not None:
            self._watch(waiter, deadline, partial(_time_out, waiter))
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._give_slot()  # handed one just as the wait ended: pass it on
            raise
        finally:
            self._watched.pop(waiter, None)

    def _give_slot(self) -> None:
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():  # (one whose wait ended is skipped)
                waiter.set_result(None)
                return
        self._free += 1

    def _watch(self, key: asyncio.Future[Any], deadline: float, expire: Callable[[], None]) -> None:
        """Call ``expire`` at ``deadline`` unless ``key`` is unwatched by then."""
        self._watched[key] = (deadline, expire)
        if deadline < self._watchdog_at:
            if self._watchdog is not None:
                self._watchdog.cancel()
            self._arm(deadline)

    def _arm(self, at: float) -> None:
        self._watchdog_at = at
        self._watchdog = asyncio.get_running_loop().call_at(at, self._expire_overdue)

    def _expire_overdue(self) -> None:
        """Expire what is due by now (the time this timer was set for), and watch for
        the next."""
        due, self._watchdog, self._watchdog_at = self._watchdog_at, None, math.inf
        earliest = math.inf
        for key, (deadline, expire) in list(self._watched.items()):
            if deadline <= due:
                del self._watched[key]
                expire()
            else:
                earliest = min(earliest, deadline)
        if earliest < math.inf:
            self._arm(earliest)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(
                _Connection,
                self.host,
                self.port,
                ssl=self.tls,
                server_hostname=self.host if self.tls else None,
            )
        except OSError as exc:
            raise ReceiverError(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        return connection


__all__ = ["ReceiverError", "WebhookClient"]
