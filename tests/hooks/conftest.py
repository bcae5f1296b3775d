"""A hook receiver on loopback whose answer each test chooses; the hooks run on SQLite
and on PostgreSQL, with local storage."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest


@pytest.fixture(params=["sqlite+local", "postgres+local"])
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    database, storage = request.param.split("+")
    return database, storage


@dataclass
class Asked:
    headers: dict[str, str]
    body: bytes

    @property
    def document(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


# (status, body bytes, extra headers, seconds to wait first)
Answer = tuple[int, bytes, dict[str, str], float]


@dataclass
class HookReceiver:
    url: str = ""
    asked: list[Asked] = field(default_factory=list)
    # event -> how to answer it; the default accepts.
    answers: dict[str, Callable[[dict[str, Any]], Answer]] = field(default_factory=dict)

    def answer(
        self,
        event: str,
        status: int = 200,
        body: Any = None,
        *,
        delay: float = 0.0,
        hold: threading.Event | None = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """How to answer `event`: after `delay` seconds, or once `hold` is set (a test
        that must not depend on how fast the machine is releases it itself)."""
        payload = raw if raw is not None else json.dumps({} if body is None else body).encode()

        def reply(_document: dict[str, Any]) -> Answer:
            if hold is not None:
                hold.wait(timeout=60)
            return status, payload, headers or {}, delay

        self.answers[event] = reply

    def events(self) -> list[str]:
        return [asked.document["type"] for asked in self.asked]

    async def until_asked(self, events: list[str], within: float = 10.0) -> None:
        """Waits until exactly ``events`` have been asked, in that order."""
        deadline = time.monotonic() + within
        while self.events() != events:
            assert time.monotonic() < deadline, f"asked {self.events()}, not {events}"
            await asyncio.sleep(0.02)


@contextlib.contextmanager
def serving_hooks() -> Iterator[HookReceiver]:
    """A hook receiver on loopback for as long as the block runs."""
    receiver = HookReceiver()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            asked = Asked(dict(self.headers.items()), body)
            receiver.asked.append(asked)
            reply = receiver.answers.get(asked.document["type"])
            status, payload, headers, delay = reply(asked.document) if reply else (200, b"{}", {}, 0.0)
            if delay:
                time.sleep(delay)
            try:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server stopped waiting (a timeout), or is gone

        def log_message(self, *args: Any) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def hook_receiver() -> Iterator[HookReceiver]:
    with serving_hooks() as receiver:
        yield receiver
