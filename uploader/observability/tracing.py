"""OpenTelemetry traces, opt-in through the standard variables.

Tracing is on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``)
is set, unless ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``: spans leave
over OTLP/HTTP (protobuf) in batches, named by ``OTEL_SERVICE_NAME`` (default
``uploader-api`` or ``uploader-worker``); every other ``OTEL_*`` variable of the SDK and
the exporter applies. Off, neither the SDK nor the instrumentation is imported and
``tracer`` is None: the few places that make spans of their own test that one global.

What a trace holds: the API request (a server span named after its route template), the
database statements (SQLAlchemy), Redis commands, the storage operations and every S3
call, the Celery task (its context travels in the task's headers) with the pipeline's
steps, and the webhook deliveries the request caused (``traceparent`` on the POST). Log
lines carry ``trace_id`` and ``span_id``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer
    from starlette.types import Scope

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

tracer: Tracer | None = None  # set once tracing is configured in this process
_configured_in: int | None = None  # the pid that configured it (a forked child does again)
_provider: Any = None


def enabled() -> bool:
    """Whether the environment asks for traces."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return any(os.environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def configure(role: str) -> bool:
    """Set up this process's tracer provider and the libraries' instrumentation (before
    any database engine is made); ``role`` names the default service. Once per process."""
    global tracer, _configured_in, _provider
    if _configured_in == os.getpid() or not enabled():
        return tracer is not None
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    defaults = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: f"uploader-{role}"}
    _provider = TracerProvider(resource=Resource.create(defaults))
    _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(_provider)
    celery = CeleryInstrumentor()  # type: ignore[no-untyped-call]
    for instrumentor in (SQLAlchemyInstrumentor(), RedisInstrumentor(), celery):
        if not instrumentor.is_instrumented_by_opentelemetry:
            # The SQLAlchemy instrumentation names a version range older than ours; the
            # tests show its spans on what we run.
            instrumentor.instrument(skip_dep_check=True)
    tracer = trace.get_tracer("uploader")
    _configured_in = os.getpid()
    return True


def flush() -> None:
    """Send what is still buffered (a process ending)."""
    if _provider is not None:
        _provider.force_flush(timeout_millis=5000)


class RequestSpan:
    """The server span of one HTTP request, current while the request is served.

    Ours rather than the ASGI instrumentation's: that one cost a small upload a third of
    its throughput with its attribute collection and metrics, and could not name the
    tus fast path's requests after their routes."""

    __slots__ = ("span", "token")

    def __init__(self, scope: Scope) -> None:
        from opentelemetry import context, propagate, trace

        assert tracer is not None
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in (b"traceparent", b"tracestate")
        }
        parent = propagate.extract(carrier) if carrier else None
        method = scope["method"]
        self.span = tracer.start_span(
            method,
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope["path"]},
        )
        self.token = context.attach(trace.set_span_in_context(self.span, parent))

    def answered(self, method: str, route: str, status: int, request_id: str) -> None:
        """Named after the route template (known once routed), never the raw path."""
        self.span.update_name(f"{method} {route}")
        self.span.set_attributes(
            {"http.route": route, "http.response.status_code": status, "uploader.request_id": request_id}
        )

    def end(self, status: int) -> None:
        from opentelemetry import context
        from opentelemetry.trace import StatusCode

        if not 0 < status < 500:
            self.span.set_status(StatusCode.ERROR)
        self.span.end()
        context.detach(self.token)


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[Span | None]:
    """A span of ours, or nothing when tracing is off."""
    if tracer is None:
        yield None
        return
    with tracer.start_as_current_span(name, attributes=attributes) as current:
        yield current


def start_span(name: str, **attributes: Any) -> Span | None:
    """A span to end by hand (the S3 client's call hooks), child of the current one."""
    return tracer.start_span(name, attributes=attributes) if tracer is not None else None


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, to carry to a later delivery."""
    if tracer is None:
        return None
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier.get("traceparent")


def log_ids() -> tuple[str, str] | None:
    """The current trace and span ids, as hex, for log lines."""
    if tracer is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"
