"""A small client of ClamAV's daemon, ``clamd``, over its socket (``tcp://host:port`` or
``unix:///path/to/clamd.ctl``).

A file is streamed with ``INSTREAM``: the ``z``-prefixed command, then chunks, each with
its length as four big-endian bytes, then a zero length; clamd answers one
NUL-terminated line (``stream: OK``, ``stream: <signature> FOUND``, or ``… ERROR``).
Chunks are bounded, so memory stays flat whatever the file's size. A file longer than
clamd's ``StreamMaxLength`` is answered ``INSTREAM size limit exceeded. ERROR`` (clamd
may close the socket before the rest has been sent)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

CHUNK_BYTES = 256 * 1024  # at most this much of the file in one INSTREAM chunk
_SIZE_LIMIT = "INSTREAM size limit exceeded"
_REPLY_LIMIT = 4096


class ScannerUnavailable(ConnectionError):
    """clamd cannot be reached, or failed to scan: worth another try later. A
    ``ConnectionError``, so the pipeline retries it as it does any dependency."""

    code = "scan.unavailable"


@dataclass(frozen=True)
class Verdict:
    """``signature`` is set when malware was found; ``too_large`` when clamd refused the
    stream as longer than its ``StreamMaxLength``."""

    signature: str | None = None
    too_large: bool = False

    @property
    def clean(self) -> bool:
        return self.signature is None and not self.too_large


class Clamd:
    def __init__(self, url: str, timeout: float = 60.0) -> None:
        parts = urlsplit(url)
        if parts.scheme == "tcp" and parts.hostname and parts.port:
            self.host: str | None = parts.hostname
            self.port = parts.port
            self.path: str | None = None
        elif parts.scheme == "unix" and parts.path:
            self.host, self.port, self.path = None, 0, parts.path
        else:
            raise ValueError(f"not a clamd address (tcp://host:port or unix:///path): {url!r}")
        self.url = url
        self.timeout = timeout  # for each exchange with clamd: connecting, a chunk, the reply

    async def _connect(self) -> socket.socket:
        """A connected, non-blocking socket. Plain sockets rather than asyncio's streams: a
        stream stops reading once a write fails, and clamd's answer to a stream over its
        limit arrives just before it stops reading ours."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                if self.path is not None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    address: Any = self.path
                else:
                    found = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
                    family, kind, proto, _, address = found[0]
                    sock = socket.socket(family, kind, proto)
                sock.setblocking(False)
                try:
                    await loop.sock_connect(sock, address)
                except BaseException:
                    sock.close()
                    raise
                return sock
        except (OSError, TimeoutError) as exc:
            raise ScannerUnavailable(f"clamd at {self.url} cannot be reached: {exc or 'timed out'}") from exc

    async def _send(self, sock: socket.socket, data: bytes | memoryview) -> None:
        async with asyncio.timeout(self.timeout):
            await asyncio.get_running_loop().sock_sendall(sock, data)

    async def _command(self, command: bytes) -> str:
        sock = await self._connect()
        with sock:
            try:
                await self._send(sock, b"z" + command + b"\0")
                return await self._reply(sock)
            except (OSError, TimeoutError) as exc:
                raise ScannerUnavailable(f"clamd at {self.url}: {exc or 'timed out'}") from exc

    async def version(self) -> str:
        """clamd's engine and signature versions (``ClamAV 1.4.6/27…``)."""
        return await self._command(b"VERSION")

    async def ping(self) -> None:
        if (answer := await self._command(b"PING")) != "PONG":
            raise ScannerUnavailable(f"clamd at {self.url} answered {answer!r} to PING")

    async def scan(self, blocks: AsyncIterator[bytes]) -> Verdict:
        """Stream ``blocks`` to clamd and return what it found."""
        sock = await self._connect()
        with sock:
            try:
                await self._send(sock, b"zINSTREAM\0")
                try:
                    async for block in blocks:
                        view = memoryview(block)
                        for start in range(0, len(view), CHUNK_BYTES):
                            piece = view[start : start + CHUNK_BYTES]
                            await self._send(sock, len(piece).to_bytes(4, "big"))
                            await self._send(sock, piece)
                    await self._send(sock, b"\0\0\0\0")
                except (ConnectionResetError, BrokenPipeError):
                    pass  # clamd stopped reading (a stream over its limit): its answer says why
                reply = await self._reply(sock)
            except (OSError, TimeoutError) as exc:
                raise ScannerUnavailable(f"clamd at {self.url}: {exc or 'timed out'}") from exc
        return _verdict(reply, self.url)

    async def _reply(self, sock: socket.socket) -> str:
        """clamd's one NUL-terminated line (what arrived of it, when it closed first)."""
        loop = asyncio.get_running_loop()
        received = bytearray()
        async with asyncio.timeout(self.timeout):
            while b"\0" not in received and len(received) < _REPLY_LIMIT:
                try:
                    data = await loop.sock_recv(sock, 4096)
                except ConnectionResetError:
                    data = b""
                if not data:
                    break
                received += data
        if b"\0" not in received:
            raise ScannerUnavailable(f"clamd at {self.url} closed the connection without an answer")
        return bytes(received[: received.index(b"\0")]).decode("utf-8", "replace").strip()


def _verdict(reply: str, url: str) -> Verdict:
    if reply.startswith(_SIZE_LIMIT):
        return Verdict(too_large=True)
    subject, _, result = reply.partition(": ")
    if subject == "stream" and result == "OK":
        return Verdict()
    if subject == "stream" and result.endswith(" FOUND"):
        return Verdict(signature=result.removesuffix(" FOUND").strip() or "unknown")
    # "… ERROR": clamd could not scan this time (out of memory, a database reload, …).
    raise ScannerUnavailable(f"clamd at {url} could not scan: {reply}")
