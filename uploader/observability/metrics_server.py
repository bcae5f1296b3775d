"""``/metrics`` of a process that serves no HTTP of its own: the Celery worker.

A prefork worker runs its tasks in child processes, so its values are kept the client
library's multiprocess way: each process writes its own to files under
``PROMETHEUS_MULTIPROC_DIR``, and a scrape sums the files. The directory must be named
before ``prometheus_client`` is first imported (the library picks its storage then), so
``prepare_multiprocess`` runs first thing in the ``worker`` command.
"""

from __future__ import annotations

import atexit
import hmac
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess() -> Path:
    """Name (or empty) the directory the worker's processes write their values to: the
    operator's ``PROMETHEUS_MULTIPROC_DIR``, or one of our own, removed at exit."""
    configured = os.environ.get(MULTIPROC_ENV)
    if configured:
        directory = Path(configured)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):  # a previous run's values are not ours
            stale.unlink()
        return directory
    directory = Path(tempfile.mkdtemp(prefix="uploader-metrics-"))
    os.environ[MULTIPROC_ENV] = str(directory)
    owner = os.getpid()

    def remove() -> None:
        if os.getpid() == owner:  # not in a forked child that happens to run exit handlers
            shutil.rmtree(directory, ignore_errors=True)

    atexit.register(remove)
    return directory


def process_ended(pid: int) -> None:
    """A worker process ended: its live gauges stop counting."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
        return None


StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def metrics_app(token: str | None) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """A WSGI app answering ``GET /metrics`` with every live process's values."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from uploader.observability.metrics import registry

    expected = f"Bearer {token}".encode() if token else None

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: scrape /metrics\n"]
        given = environ.get("HTTP_AUTHORIZATION", "").encode()
        if expected is not None and not hmac.compare_digest(given, expected):
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Bearer realm="metrics"')])
            return [b"/metrics needs Authorization: Bearer <UPLOADER_METRICS_TOKEN>\n"]
        body = generate_latest(registry())
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))])
        return [body]

    return app


def serve_metrics(host: str, port: int, token: str | None) -> WSGIServer:
    """Serve ``/metrics`` on ``host:port`` from a thread of this process."""
    server = make_server(host, port, metrics_app(token), _ThreadingServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
