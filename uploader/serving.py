"""``uploader serve``: the API in one process, or in several sharing one listening socket.

With ``--workers N`` (``UPLOADER_WORKERS``) the command binds the socket, forks N server
processes that accept on it, and supervises them: one that dies (a crash, ``kill -9``) is
replaced, and SIGTERM or SIGINT is passed on to all of them, each draining as a single
server does, before the command exits. Several processes need what lets any of them
serve any upload: PostgreSQL (SQLite takes one writer at a time) and Redis (upload locks
and live events across processes). Their metrics are kept the client library's
multiprocess way, so ``/metrics`` of any of them sums all.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import subprocess
import sys
import time
from types import FrameType

import uvicorn

from uploader.kit.logging import get_logger
from uploader.settings import Settings

log = get_logger(__name__)

# A request allocates a few hundred container objects that die young; collecting the
# youngest generation every 700 allocations (the default) cost about 5% of the CPU of
# many small uploads. The cyclic garbage that waits longer this way is request-sized.
GC_THRESHOLDS = (20_000, 20, 20)
RESPAWN_PAUSE_SECONDS = 1.0  # between a process's death and its replacement


class GracefulServer(uvicorn.Server):
    """On SIGTERM/SIGINT, in-flight PATCHes stop reading and record what they received.

    Once started, everything loaded so far (modules, the app, the runtime) is moved out of
    the collector's sight: full collections no longer walk a heap that lives as long as
    the process.
    """

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        gc.collect()
        gc.freeze()

    shutdown_delay = 0.0
    _draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        app = self.config.loaded_app
        state = getattr(getattr(app, "app", app), "state", None)
        if state is not None:
            state.draining = True  # /readyz answers 503 from now on
        if self.shutdown_delay > 0 and not self._draining:
            # Still serving, so that a load balancer sees /readyz fail and stops routing
            # here; a second signal stops at once.
            self._draining = True
            log.info("server.draining", stop_in_seconds=self.shutdown_delay)
            asyncio.get_running_loop().call_later(self.shutdown_delay, self._stop, sig, frame)
            return
        self._stop(sig, frame)

    def _stop(self, sig: int, frame: FrameType | None) -> None:
        app = self.config.loaded_app
        state = getattr(getattr(app, "app", app), "state", None)
        service = getattr(state, "uploads", None) if state is not None else None
        if service is not None:
            service.locker.interrupt_all()
        super().handle_exit(sig, frame)


def why_not_several(settings: Settings) -> str | None:
    """What keeps several processes from serving together, if anything."""
    needs = []
    if settings.resolved_database_url.startswith("sqlite"):
        needs.append("PostgreSQL (UPLOADER_DATABASE_URL): SQLite takes one writer at a time")
    if not settings.redis_url:
        needs.append("Redis (UPLOADER_REDIS_URL): upload locks and live events are in-process without it")
    return "; ".join(needs) or None


def serve(settings: Settings, host: str, port: int, workers: int) -> int:
    if workers > 1 and (missing := why_not_several(settings)):
        print(f"error: --workers {workers} needs {missing}", file=sys.stderr)
        return 2
    # In a child process: the server never holds Alembic in memory (~13 MiB). Where a job
    # migrates, only check that it has: a server on an older schema would fail obscurely.
    migrate = ["migrate"] if settings.migrate_on_start else ["migrate", "--wait", "0"]
    migrated = subprocess.run([sys.executable, "-m", "uploader", *migrate], check=False)
    if migrated.returncode != 0:
        log.error("database.migration_failed", exit_code=migrated.returncode)
        return migrated.returncode
    log.info(
        "server.listening",
        url=f"http://{host}:{port}",
        tus=f"http://{host}:{port}{settings.tus_path}",
        processes=workers,
    )
    if workers == 1:
        return _run_server(settings, host, port, None)
    from uploader.observability import metrics_server

    metrics_server.prepare_multiprocess()  # before the processes import the metrics
    listening = socket.create_server((host, port), backlog=2048, reuse_port=False)
    listening.set_inheritable(True)
    return _Supervisor(settings, listening, workers).run()


def _run_server(settings: Settings, host: str, port: int, listening: socket.socket | None) -> int:
    from uploader.app import create_app
    from uploader.kit.http_protocol import guarded_protocol

    gc.set_threshold(*GC_THRESHOLDS)
    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        loop="uvloop",
        http=guarded_protocol(
            settings.max_header_bytes, settings.header_timeout_seconds, settings.max_connections
        ),
        timeout_keep_alive=settings.keep_alive_seconds,
        # X-Forwarded-For and -Proto are believed from UPLOADER_TRUSTED_PROXIES only.
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=",".join(settings.trusted_proxies) or None,
        lifespan="on",
        access_log=settings.access_log,
        log_config=None,
        timeout_graceful_shutdown=30,
    )
    server = GracefulServer(config)
    server.shutdown_delay = settings.shutdown_delay_seconds
    server.run(sockets=[listening] if listening is not None else None)
    return 0


class _Supervisor:
    """Forks the server processes, replaces one that dies, and stops them all on a signal."""

    def __init__(self, settings: Settings, listening: socket.socket, workers: int) -> None:
        self.settings = settings
        self.listening = listening
        self.workers = workers
        self.children: dict[int, int] = {}  # pid -> slot
        self.stopping = False

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        for slot in range(self.workers):
            self._spawn(slot)
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.1)
                continue
            slot = self.children.pop(pid)
            _forget(pid)
            if self.stopping:
                continue
            log.error(
                "server.process_died", pid=pid, status=_describe(status), replaced_in=RESPAWN_PAUSE_SECONDS
            )
            time.sleep(RESPAWN_PAUSE_SECONDS)
            if not self.stopping:
                self._spawn(slot)
        self.listening.close()
        log.info("server.stopped", processes=self.workers)
        return 0

    def _spawn(self, slot: int) -> None:
        pid = os.fork()
        if pid == 0:  # the server process
            code = 1
            try:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                host, port = self.listening.getsockname()[:2]
                code = _run_server(self.settings, host, port, self.listening)
            except BaseException:
                log.exception("server.process_failed")
            finally:
                os._exit(code)
        self.children[pid] = slot
        log.info("server.process_started", pid=pid, slot=slot)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        # The first signal starts each process's drain; a second stops them at once.
        self.stopping = True
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def _forget(pid: int) -> None:
    """A dead server process's live gauges stop counting."""
    from uploader.observability import metrics_server

    metrics_server.process_ended(pid)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with {os.waitstatus_to_exitcode(status)}"
