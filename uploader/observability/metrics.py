"""The Prometheus metrics of the API and the workers: one place that names them all.

Every name starts with ``uploader_``; the core names (requests, bytes, uploads, open
connections, PATCHes in flight) are fixed, since dashboards and alerts rely on them.
Label values are never taken from a client: routes are templates, methods a fixed set,
protocols and outcomes our own words.

Recording is in-process and costs a few microseconds: no request pays a database query
for it. What is counted in the database (uploads by state, the webhook outbox) and the
Celery queue are read when ``/metrics`` is scraped, at most every few seconds.

Under ``PROMETHEUS_MULTIPROC_DIR`` (a Celery worker's pool, several API processes) the
client library writes values to files there, and a scrape sums the live processes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.multiprocess import MultiProcessCollector

from uploader.observability import tracing

disable_created_metrics()  # type: ignore[no-untyped-call]  # a series per counter that no dashboard reads

# The protocol of the request at hand, for the upload counters: each protocol's handlers
# set theirs; tus is the default (its fast path sets nothing).
DEFAULT_PROTOCOL = "tus"
current_protocol: ContextVar[str] = ContextVar("protocol", default=DEFAULT_PROTOCOL)


@contextlib.contextmanager
def counted_as(protocol: str) -> Iterator[None]:
    """Uploads created or finished in this block count under ``protocol``."""
    token = current_protocol.set(protocol)
    try:
        yield
    finally:
        current_protocol.reset(token)


# Seconds: from a tus HEAD (a millisecond) to a PATCH of a large file (half an hour).
_REQUEST_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
_OPERATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120)
_STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)

# HTTP
REQUESTS = Counter(
    "uploader_requests_total",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
REQUEST_DURATION = Histogram(
    "uploader_request_duration_seconds",
    "Time from a request's start to the end of its response, by method and route template.",
    ["method", "route"],
    buckets=_REQUEST_BUCKETS,
)
BYTES_RECEIVED = Counter("uploader_bytes_received_total", "Request body bytes received.")
BYTES_SENT = Counter("uploader_bytes_sent_total", "Response body bytes sent.")
CONNECTIONS_OPEN = Gauge(
    "uploader_connections_open", "HTTP connections open now.", multiprocess_mode="livesum"
)
CONNECTIONS_REFUSED = Counter(
    "uploader_connections_refused_total",
    "Connections answered 503 and closed because UPLOADER_MAX_CONNECTIONS were open.",
)
REQUEST_TIMEOUTS = Counter(
    "uploader_request_timeouts_total",
    "Requests ended because their headers or body stopped arriving, by phase.",
    ["phase"],
)

# Uploads
UPLOADS_CREATED = Counter(
    "uploader_uploads_created_total", "Uploads created, by protocol (tus, ietf, form).", ["protocol"]
)
UPLOADS_FINISHED = Counter(
    "uploader_uploads_finished_total",
    "Uploads whose last byte was received, by protocol (tus, ietf, form).",
    ["protocol"],
)
UPLOADS_TERMINATED = Counter("uploader_uploads_terminated_total", "Uploads deleted by a client.")
UPLOADS_EXPIRED = Counter("uploader_uploads_expired_total", "Uploads removed by the expiry sweep.")
UPLOADS_BY_STATE = Gauge(
    "uploader_uploads",
    "Uploads recorded now, by state (read when scraped).",
    ["state"],
    multiprocess_mode="mostrecent",
)
PATCHES_IN_FLIGHT = Gauge(
    "uploader_patches_in_flight",
    "Appends (tus PATCH, draft append) writing now.",
    multiprocess_mode="livesum",
)
LOCK_WAITS = Counter(
    "uploader_lock_waits_total", "Requests that found their upload locked and waited for it."
)
LOCK_WAIT_DURATION = Histogram(
    "uploader_lock_wait_seconds", "Time spent waiting for an upload's lock.", buckets=_OPERATION_BUCKETS
)
LOCK_INTERRUPTS = Counter(
    "uploader_lock_interrupts_total",
    "Writes asked to stop early: a newer request for the same upload, or the server stopping.",
)

# Storage
STORAGE_DURATION = Histogram(
    "uploader_storage_operation_duration_seconds",
    "Storage operations, by backend (local, s3) and operation.",
    ["backend", "operation"],
    buckets=_OPERATION_BUCKETS,
)
STORAGE_ERRORS = Counter(
    "uploader_storage_errors_total",
    "Storage operations that failed, by backend and operation.",
    ["backend", "operation"],
)

# Processing
STEP_DURATION = Histogram(
    "uploader_processing_step_duration_seconds",
    "Processing steps, by step.",
    ["step"],
    buckets=_STEP_BUCKETS,
)
STEPS = Counter(
    "uploader_processing_steps_total",
    "Processing steps run, by step and outcome (done, skipped, failed, error).",
    ["step", "outcome"],
)
PROCESSING_FINISHED = Counter(
    "uploader_processing_finished_total",
    "Uploads whose processing ended, by state (ready, failed).",
    ["state"],
)
TASKS = Counter(
    "uploader_tasks_total",
    "Celery tasks a worker ran, by task and outcome (succeeded, retried, failed).",
    ["task", "outcome"],
)
QUEUE_DEPTH = Gauge(
    "uploader_queue_depth",
    "Celery tasks waiting in the queue (read when scraped).",
    ["queue"],
    multiprocess_mode="mostrecent",
)

# Webhooks, hooks and live events
WEBHOOK_DELIVERIES = Counter(
    "uploader_webhook_deliveries_total",
    "Webhook delivery attempts, by outcome (delivered, failed, dead).",
    ["outcome"],
)
WEBHOOK_DURATION = Histogram(
    "uploader_webhook_delivery_duration_seconds", "Webhook delivery attempts.", buckets=_OPERATION_BUCKETS
)
WEBHOOK_OUTBOX = Gauge(
    "uploader_webhook_outbox_events",
    "Webhook events in the outbox, by status (read when scraped).",
    ["status"],
    multiprocess_mode="mostrecent",
)
HOOK_CALLS = Counter(
    "uploader_hook_calls_total",
    "Blocking hook calls, by event and outcome (accepted, rejected, unavailable).",
    ["event", "outcome"],
)
HOOK_DURATION = Histogram(
    "uploader_hook_duration_seconds", "Blocking hook calls, by event.", ["event"], buckets=_OPERATION_BUCKETS
)
SSE_CLIENTS = Gauge("uploader_sse_clients", "Event streams open now.", multiprocess_mode="livesum")
DEPENDENCY_UP = Gauge(
    "uploader_dependency_up",
    "Whether a dependency (database, storage, redis) answered its check (read when scraped).",
    ["dependency"],
    multiprocess_mode="mostrecent",
)
READY = Gauge(
    "uploader_ready",
    "1 when /readyz would answer 200: every dependency answers and the process is not draining.",
    multiprocess_mode="mostrecent",
)
SCRAPE_ERRORS = Counter(
    "uploader_metrics_collection_errors_total",
    "Values read when scraped that could not be read, by source (readiness, database, redis).",
    ["source"],
)
S3_REQUEST_DURATION = Histogram(
    "uploader_s3_request_duration_seconds",
    "Calls to S3 (with the client's retries), by API operation (UploadPart, HeadObject…).",
    ["operation"],
    buckets=_OPERATION_BUCKETS,
)


def registry() -> CollectorRegistry:
    """This process's registry, or every live process's values in multiprocess mode."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        merged = CollectorRegistry()
        MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        return merged
    return REGISTRY


P = ParamSpec("P")
T = TypeVar("T")


def timed_storage(
    backend: str, operation: str
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Coroutine[Any, Any, T]]]:
    """Times a storage backend's coroutine method into ``uploader_storage_operation_*``, in
    a span of its own when tracing is on."""
    duration = STORAGE_DURATION.labels(backend, operation)
    span_name = f"storage.{operation}"
    errors = STORAGE_ERRORS.labels(backend, operation)

    def decorate(function: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        @functools.wraps(function)
        async def timed(*args: P.args, **kwargs: P.kwargs) -> T:
            started = time.perf_counter()
            try:
                if tracing.tracer is None:
                    return await function(*args, **kwargs)
                with tracing.span(span_name, **{"uploader.storage.backend": backend}):
                    return await function(*args, **kwargs)
            except Exception:
                errors.inc()
                raise
            finally:
                duration.observe(time.perf_counter() - started)

        return timed

    return decorate
