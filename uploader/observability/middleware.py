"""The outermost ASGI layer: gives every request its id and counts it.

Pure ASGI, not a Starlette ``BaseHTTPMiddleware``: it wraps ``send`` and ``receive`` and
adds nothing else to a request, so a small tus upload pays a few microseconds for it.
The route label is the template the router matched (``/files/{upload_id}``), never the
raw path, so no client can add series.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from uploader.observability import metrics, tracing
from uploader.observability.request_ids import REQUEST_ID_HEADER, accepted_or_new, current_request_id

_REQUEST_ID_KEY = REQUEST_ID_HEADER.lower().encode()
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # the route label of a request no route took (a 404)
CLIENT_GONE = 499  # the status label of a request whose client left before any answer
FLUSH_BYTES = 1024 * 1024


def route_template(scope: Scope) -> str:
    """The template of the route that served ``scope``, or ``unmatched``."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class _Observed:
    """The method and route's metric children, looked up once per (method, route, status)."""

    __slots__ = ("counters", "histograms")

    def __init__(self) -> None:
        self.counters: dict[tuple[str, str, int], Any] = {}
        self.histograms: dict[tuple[str, str], Any] = {}

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        counter = self.counters.get(key)
        if counter is None:
            counter = self.counters[key] = metrics.REQUESTS.labels(method, route, str(status))
        counter.inc()
        histogram = self.histograms.get((method, route))
        if histogram is None:
            histogram = self.histograms[(method, route)] = metrics.REQUEST_DURATION.labels(method, route)
        histogram.observe(seconds)


class RequestTelemetry:
    def __init__(self, app: ASGIApp, *, count: bool = True) -> None:
        self.app = app
        self.count = count
        self._observed = _Observed()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = None
        for name, value in scope["headers"]:
            if name == _REQUEST_ID_KEY:
                raw = value
                break
        request_id = accepted_or_new(raw)
        header = (_REQUEST_ID_KEY, request_id.encode())
        # Reset afterwards: a server runs each request in a context of its own, but an
        # in-process client (tests, a mounting application) runs them all in one.
        id_token = current_request_id.set(request_id)
        started = time.perf_counter()
        count = self.count
        traced = tracing.RequestSpan(scope) if tracing.tracer is not None else None
        status = 0
        # Bytes are added to the counters a MiB at a time and at the end, not per message.
        received = sent = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            body = message.get("body")
            if body:
                received += len(body)
                if received >= FLUSH_BYTES:
                    metrics.BYTES_RECEIVED.inc(received)
                    received = 0
            return message

        async def counting_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
                if traced is not None:
                    traced.answered(scope["method"], route_template(scope), status, request_id)
            elif count:
                body = message.get("body")
                if body:
                    sent += len(body)
                    if sent >= FLUSH_BYTES:
                        metrics.BYTES_SENT.inc(sent)
                        sent = 0
            await send(message)

        try:
            await self.app(scope, counting_receive if count else receive, counting_send)
        finally:
            if traced is not None:
                traced.end(status)
            current_request_id.reset(id_token)
            if count:
                if received:
                    metrics.BYTES_RECEIVED.inc(received)
                if sent:
                    metrics.BYTES_SENT.inc(sent)
                method = scope["method"]
                self._observed.record(
                    method if method in _METHODS else "other",
                    route_template(scope),
                    status or CLIENT_GONE,
                    time.perf_counter() - started,
                )
