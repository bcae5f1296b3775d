"""Clients that misbehave on purpose: slow bodies, stalls, raw sockets."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from urllib.parse import urlsplit

import httpx

from tests.e2e.slow_client import HandFedPatch
from tests.support import PATCH_HEADERS, TUS

MiB = 1024 * 1024


def create(tus_url: str, length: int, **headers: str) -> str:
    response = httpx.post(tus_url, headers={**TUS, "Upload-Length": str(length), **headers}, timeout=30)
    assert response.status_code == 201, response.text
    location: str = response.headers["Location"]
    return location


def send_from(url: str, data: bytes, offset: int) -> httpx.Response:
    """PATCH the rest of ``data`` from ``offset``, as a resuming client does."""
    headers = {**PATCH_HEADERS, "Upload-Offset": str(offset)}
    return httpx.patch(url, content=data[offset:], headers=headers, timeout=60)


def head_offset(url: str) -> int:
    response = httpx.head(url, headers=TUS, timeout=30)
    assert response.status_code == 200, (response.status_code, response.headers)
    return int(response.headers["Upload-Offset"])


class TricklingPatch:
    """A PATCH whose body goes out at ``rate`` bytes per second from a thread of its own."""

    def __init__(
        self, url: str, data: bytes, offset: int = 0, rate: int = MiB, block: int = 64 * 1024
    ) -> None:
        self.feeder = HandFedPatch(url, offset, len(data) - offset)
        self.data = data
        self.offset = offset
        self.rate = rate
        self.block = block
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            position = self.offset
            started = time.monotonic()
            while position < len(self.data):
                block = self.data[position : position + self.block]
                self.feeder.send(block)
                position += len(block)
                ahead = (position - self.offset) / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
            response = self.feeder.response()
            self.status = response.status
            self.headers = {k.lower(): v for k, v in response.getheaders()}
        except BaseException as exc:
            self.error = exc
        finally:
            self.feeder.close()

    def wait(self, seconds: float = 120) -> int | None:
        self.thread.join(seconds)
        assert not self.thread.is_alive(), "the PATCH did not end"
        return self.status


def raw_request(host_url: str, data: bytes, read_seconds: float = 30) -> bytes:
    """Send raw bytes on a new connection; everything the server answers until it closes."""
    url = urlsplit(host_url)
    with socket.create_connection((url.hostname, url.port), timeout=read_seconds) as sock:

        def send() -> None:
            with contextlib.suppress(OSError):  # the server may stop reading and close
                sock.sendall(data)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
        sender.join(read_seconds)
        return b"".join(chunks)
