"""A lean Redis client for the few commands every upload sends: the lock's scripts, the
event's script and the task's ``LPUSH``.

redis-py spends 50 to 60 microseconds of CPU around each command (its connection pool,
stream writer, parser and retry wrappers); under many small uploads that was a fifth of
an API process's time on the full stack. Here one connection carries every command of
the client, pipelined: the commands sent while the loop runs what is ready go out in one
write once it has, and replies are matched to callers in order as they arrive (Redis
answers in order). A process's locks, events and task queue share one client, so that
with many requests at once a write carries several of their commands. What callers see is
redis-py's: its exception types (``ConnectionError``, ``TimeoutError``,
``ResponseError``), the same bounded waits (3 s to connect, 5 s for a reply) and the
same retry of a command whose connection died (twice, after 0.1 and 0.2 s). Scripts run
by their SHA-1, and are sent whole only when Redis does not have them (after a restart).

Only ``redis://`` URLs (host, port, database, password); anything else is served by
redis-py (``lean_client``).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

_CRLF = b"\r\n"
_RETRY_DELAYS = (0.1, 0.2)


class Script:
    """A Lua script, run by its SHA-1."""

    def __init__(self, source: str) -> None:
        self.source = source.encode()
        self.sha = hashlib.sha1(self.source, usedforsecurity=False).hexdigest().encode()


def _encode(args: tuple[Any, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int | float):
            data = repr(arg).encode()
        else:
            raise TypeError(f"cannot send {type(arg).__name__} to Redis")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Incomplete(Exception):
    """The buffer ends inside a reply: wait for more bytes."""


def _parse(buffer: bytearray, at: int) -> tuple[Any, int]:
    """One RESP2 reply from ``buffer[at:]``: the value and where the next one starts."""
    end = buffer.find(_CRLF, at)
    if end < 0:
        raise _Incomplete
    kind, line, after = buffer[at], bytes(buffer[at + 1 : end]), end + 2
    if kind == 0x2B:  # + simple string
        return line, after
    if kind == 0x3A:  # : integer
        return int(line), after
    if kind == 0x24:  # $ bulk string
        size = int(line)
        if size < 0:
            return None, after
        if len(buffer) < after + size + 2:
            raise _Incomplete
        return bytes(buffer[after : after + size]), after + size + 2
    if kind == 0x2A:  # * array
        count = int(line)
        if count < 0:
            return None, after
        items = []
        for _ in range(count):
            item, after = _parse(buffer, after)
            items.append(item)
        return items, after
    if kind == 0x2D:  # - error
        message = line.decode(errors="replace")
        error = NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)
        return error, after
    raise RedisConnectionError(f"unexpected reply from Redis: {bytes(buffer[at : at + 20])!r}")


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.buffer = bytearray()
        self.lost = False
        self.outgoing: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is no subclass)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        at = 0
        try:
            while at < len(self.buffer) and self.waiting:
                reply, at = _parse(self.buffer, at)
                waiter = self.waiting.popleft()
                if not waiter.done():  # (one that timed out closed the connection)
                    waiter.set_result(reply)
        except _Incomplete:
            pass
        except RedisConnectionError as exc:
            self._fail(exc)
            self.close()
            return
        del self.buffer[:at]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        reason = f"Connection closed by server: {exc}" if exc else "Connection closed"
        self._fail(RedisConnectionError(reason))

    def _fail(self, exc: Exception) -> None:
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_exception(exc)

    def send(self, command: bytes) -> asyncio.Future[Any]:
        assert self.transport is not None
        if self.lost:
            raise RedisConnectionError("Connection closed")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        self.waiting.append(waiter)
        # Written once the loop has run what is ready now: the commands that callers send
        # meanwhile (other requests, the other components) go in the same write, and
        # Redis reads them at once and answers them in one write.
        if not self.outgoing:
            loop.call_soon(self._flush)
        self.outgoing.append(command)
        return waiter

    def _flush(self) -> None:
        if not self.lost:  # (else connection_lost failed their callers)
            assert self.transport is not None
            self.transport.write(b"".join(self.outgoing))
        self.outgoing.clear()

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()


class LeanRedis:
    def __init__(self, url: str, connect_timeout: float = 3.0, reply_timeout: float = 5.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "redis":
            raise ValueError(f"only redis:// URLs, not {parts.scheme}://")
        self.host = parts.hostname or "localhost"
        self.port = parts.port or 6379
        path_db = parts.path.lstrip("/")
        query_db = parse_qs(parts.query).get("db", ["0"])[0]
        self.db = int(path_db or query_db or 0)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.connect_timeout = connect_timeout
        self.reply_timeout = reply_timeout
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None

    async def call(self, *args: Any) -> Any:
        """One command's reply; its error reply raised as ``ResponseError``."""
        command = _encode(args)
        for delay in (*_RETRY_DELAYS, None):
            try:
                reply = await self._exchange(command)
                break
            except (RedisConnectionError, RedisTimeoutError):
                if delay is None:
                    raise
                await asyncio.sleep(delay)
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def run(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """``script``'s reply, by its SHA-1, or whole when Redis does not have it."""
        try:
            return await self.call(b"EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.call(b"EVAL", script.source, len(keys), *keys, *args)

    async def _exchange(self, command: bytes) -> Any:
        connection = self._connection
        if connection is None or connection.lost:
            connection = await self._connect()
        waiter = connection.send(command)
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self.reply_timeout, self._expire, connection, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()

    def _expire(self, connection: _Connection, waiter: asyncio.Future[Any]) -> None:
        if not waiter.done():
            waiter.set_exception(RedisTimeoutError("Timeout reading from Redis"))
            connection.close()  # later replies would go to the wrong callers

    async def _connect(self) -> _Connection:
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._open())
        # Shielded: one caller giving up does not end the connect the others wait for.
        return await asyncio.shield(self._connecting)

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(_Connection, self.host, self.port)
                greeting = []
                if self.password is not None:
                    auth = (self.username, self.password) if self.username else (self.password,)
                    greeting.append(connection.send(_encode((b"AUTH", *auth))))
                if self.db:
                    greeting.append(connection.send(_encode((b"SELECT", self.db))))
                for reply in await asyncio.gather(*greeting):
                    if isinstance(reply, ResponseError):
                        connection.close()
                        raise RedisConnectionError(str(reply))
        except TimeoutError:
            raise RedisTimeoutError("Timeout connecting to Redis") from None
        except OSError as exc:
            raise RedisConnectionError(f"Error connecting to {self.host}:{self.port}: {exc}") from exc
        self._connection = connection
        return connection

    async def close(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        if self._connection is not None:
            self._connection.close()
            self._connection = None


ScriptCall = Callable[..., Awaitable[Any]]


def lean_client(url: str) -> LeanRedis | None:
    """A lean client for ``url``, if it is one (``redis://``) and this process is not
    traced (redis-py's instrumentation makes the spans); else None."""
    from uploader.observability import tracing

    return LeanRedis(url) if urlsplit(url).scheme == "redis" and tracing.tracer is None else None


class HotPath:
    """The hot commands of one component (the locks, the events, the task queue): on a
    ``LeanRedis`` when one can serve the URL (``lean_client``), else on the component's
    redis-py client. ``shared``: the process's one lean client, which its owner closes;
    the components of a process share it, so that what they send at once goes out in
    one write."""

    def __init__(self, redis: Redis, url: str, shared: LeanRedis | None = None) -> None:
        self.redis = redis
        self.owns_lean = shared is None
        self.lean = shared if shared is not None else lean_client(url)

    def script(self, source: str) -> ScriptCall:
        """An awaitable ``call(keys=[...], args=[...])`` running ``source``."""
        if self.lean is None:
            return self.redis.register_script(source)
        lean, script = self.lean, Script(source)

        async def call(keys: list[str], args: list[Any]) -> Any:
            return await lean.run(script, keys, args)

        return call

    async def call(self, *args: Any) -> Any:
        if self.lean is None:
            return await self.redis.execute_command(*args)  # type: ignore[no-untyped-call]
        return await self.lean.call(*args)

    async def close(self) -> None:
        if self.lean is not None and self.owns_lean:
            await self.lean.close()
