"""uvicorn's httptools protocol with limits on what a client may send before its request
exists: the request line and headers together at most ``max_header_bytes`` (431), and all
of them within ``header_timeout`` of the connection opening or the request starting.

httptools accepts headers of any size and count, and parsing time and memory grew faster
than their size (a 128 MiB header took 17 s and three times its size in memory); a header
trickled one byte every few seconds held its connection for as long as the client liked.
Both happen before authentication, so any client could.
"""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from uploader.kit.errors import ERRORS
from uploader.observability import metrics

BUSY_RETRY_AFTER_SECONDS = 1


class _Refused(Exception):
    """Stops the parser once a request has been refused. httptools turns it into a parser
    error, which uvicorn would answer with a 400 of its own: ``send_400_response`` sends
    nothing once this connection has answered."""


def _problem(code: str, detail: str, headers: str = "") -> bytes:
    """The problem document of ``code`` (from the one table of codes), as a whole response;
    ``headers``: more header lines, each ending in CRLF."""
    kind = ERRORS[code]
    status = kind.status
    body = json.dumps(
        {
            "type": f"https://uploader.dev/problems/{code}",
            "title": kind.title,
            "status": status,
            "detail": detail,
            "code": code,
        }
    ).encode()
    reason = HTTPStatus(status).phrase
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/problem+json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n{headers}\r\n"
    )
    return head.encode() + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    max_header_bytes = 64 * 1024
    header_timeout = 20.0
    max_connections: int | None = None  # beyond it, a new connection's request gets a 503

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        metrics.CONNECTIONS_OPEN.inc()
        self._header_bytes = 0
        self._awaiting_headers = True
        self._refused = False
        self._header_timer: asyncio.TimerHandle | None = None
        # The server's set of connections holds this one already.
        limit = self.max_connections
        self._over_limit = limit is not None and len(self.server_state.connections) > limit
        self._start_header_timer()

    def _start_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_timed_out)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self._awaiting_headers and not self.transport.is_closing():
            metrics.REQUEST_TIMEOUTS.labels("header").inc()
            detail = f"the request's headers did not arrive within {self.header_timeout:g} s"
            self._refuse("request.header_timeout", detail)

    def _refuse(self, code: str, detail: str, headers: str = "") -> None:
        if self._refused:
            return  # answered already: a refused request gets one answer
        self._refused = True
        self._awaiting_headers = True  # every byte from here on goes nowhere
        self._stop_header_timer()
        self.transport.write(_problem(code, detail, headers))
        # Read no more, and close a moment later: closing at once while the client still
        # sends would reset the connection and could discard the answer before it is read.
        self.transport.pause_reading()
        self.loop.call_later(0.5, self.transport.close)

    def _too_large(self) -> None:
        detail = f"the request line and headers may take {self.max_header_bytes} bytes"
        self._refuse("request.header_too_large", detail)

    def data_received(self, data: bytes) -> None:
        if not self._awaiting_headers:  # a body: nothing more to look at than uvicorn does
            super().data_received(data)
            return
        if self._refused:
            return
        self._header_bytes += len(data)
        if self._header_bytes > self.max_header_bytes + 256 * 1024:
            self._too_large()  # far past the limit before the parser even finished
            return
        super().data_received(data)
        if self._awaiting_headers and self._header_bytes > self.max_header_bytes:
            self._too_large()

    def on_message_begin(self) -> None:
        if self._refused:
            raise _Refused
        if self._over_limit:  # answered once the client speaks, so that it reads the answer
            metrics.CONNECTIONS_REFUSED.inc()
            detail = f"{self.max_connections} connections are open, the most this server takes"
            self._refuse("service.busy", detail, f"retry-after: {BUSY_RETRY_AFTER_SECONDS}\r\n")
            raise _Refused
        super().on_message_begin()
        self._awaiting_headers = True
        self._header_bytes = 0
        self._start_header_timer()

    def on_headers_complete(self) -> None:
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        self._awaiting_headers = False
        self._stop_header_timer()
        if size > self.max_header_bytes:
            self._too_large()
            raise _Refused
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # one answer per refused request: ours
            super().send_400_response(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        metrics.CONNECTIONS_OPEN.dec()
        self._stop_header_timer()
        super().connection_lost(exc)


def guarded_protocol(max_header_bytes: int, header_timeout: float, max_connections: int | None = None) -> Any:
    """The protocol class for uvicorn's ``http`` setting, with these limits."""
    return type(
        "GuardedHttpTools",
        (GuardedHttpToolsProtocol,),
        {
            "max_header_bytes": max_header_bytes,
            "header_timeout": header_timeout,
            "max_connections": max_connections,
        },
    )
