"""The ``uploader`` command: the service (``serve``, ``worker``, ``beat``, ``migrate``) and
its client (``upload``, ``status``, ``watch``, ``download``)."""

from __future__ import annotations

import argparse
import gc
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from uploader.kit.logging import configure_logging, get_logger
from uploader.settings import Settings

log = get_logger(__name__)

# A request allocates a few hundred container objects that die young; collecting the
# youngest generation every 700 allocations (the default) cost about 5% of the CPU of
# many small uploads. The cyclic garbage that waits longer this way is request-sized.
GC_THRESHOLDS = (20_000, 20, 20)


class _GracefulServer(uvicorn.Server):
    """On SIGTERM/SIGINT, in-flight PATCHes stop reading and record what they received.

    Once started, everything loaded so far (modules, the app, the runtime) is moved out of
    the collector's sight: full collections no longer walk a heap that lives as long as
    the process.
    """

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        gc.collect()
        gc.freeze()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        app = self.config.loaded_app
        state = getattr(getattr(app, "app", app), "state", None)
        service = getattr(state, "uploads", None) if state is not None else None
        if service is not None:
            service.locker.interrupt_all()
        super().handle_exit(sig, frame)


def _serve(settings: Settings, host: str, port: int) -> int:
    from uploader.app import create_app

    # Migrations run in a child process: the server never holds Alembic in memory (~13 MiB).
    migrated = subprocess.run([sys.executable, "-m", "uploader", "migrate"], check=False)
    if migrated.returncode != 0:
        log.error("database.migration_failed", exit_code=migrated.returncode)
        return migrated.returncode
    from uploader.kit.http_protocol import guarded_protocol

    gc.set_threshold(*GC_THRESHOLDS)
    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        loop="uvloop",
        http=guarded_protocol(settings.max_header_bytes, settings.header_timeout_seconds),
        lifespan="on",
        access_log=settings.access_log,
        log_config=None,
        timeout_graceful_shutdown=30,
    )
    log.info("server.listening", url=f"http://{host}:{port}", tus=f"http://{host}:{port}{settings.tus_path}")
    _GracefulServer(config).run()
    return 0


def _migrate(settings: Settings) -> int:
    from uploader.db.migrate import upgrade_to_head

    upgrade_to_head(settings.resolved_database_url)
    log.info("database.migrated")
    return 0


def _worker(settings: Settings, concurrency: int | None, pool: str) -> int:
    if settings.processing != "celery":
        log.error("worker.not_configured", hint="set UPLOADER_PROCESSING=celery and UPLOADER_REDIS_URL")
        return 2
    from workers.tasks import build_worker_app

    app = build_worker_app(settings)
    argv = ["worker", f"--pool={pool}", f"--queues={settings.task_queue}", "--without-gossip"]
    argv += ["--without-mingle", f"--loglevel={settings.log_level.upper()}"]
    if concurrency:
        argv.append(f"--concurrency={concurrency}")
    log.info("worker.starting", queue=settings.task_queue, pool=pool, concurrency=concurrency or "cores")
    app.worker_main(argv)
    return 0


def _beat(settings: Settings) -> int:
    if settings.processing != "celery":
        log.error("beat.not_configured", hint="set UPLOADER_PROCESSING=celery and UPLOADER_REDIS_URL")
        return 2
    from workers.tasks import build_worker_app

    app = build_worker_app(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    schedule = settings.data_dir / "beat-schedule"
    pidfile = settings.data_dir / "beat.pid"
    log.info("beat.starting", every_seconds=settings.cleanup_interval_seconds)
    app.start(
        ["beat", f"--schedule={schedule}", f"--pidfile={pidfile}", f"--loglevel={settings.log_level.upper()}"]
    )
    return 0


def _ping_worker(settings: Settings) -> int:
    """Exit 0 when the worker on this host answers (a container health check)."""
    import socket

    from workers.celery_app import build_celery

    app = build_celery(settings)
    answers = app.control.ping(destination=[f"celery@{socket.gethostname()}"], timeout=3)
    return 0 if answers else 1


CLIENT_COMMANDS = {"upload", "status", "watch", "download"}


def _client_commands(commands: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="the service (default $UPLOADER_URL or http://127.0.0.1:8000)")
    common.add_argument("--api-key", help="API key (default $UPLOADER_API_KEY)")
    upload = commands.add_parser(
        "upload", parents=[common], help="upload files resumably (tus); prints each upload's URL"
    )
    upload.add_argument("files", nargs="+", type=Path, metavar="FILE")
    upload.add_argument("--chunk-size", default="8MiB", help="bytes per request (default 8MiB)")
    upload.add_argument("--parallel", type=int, default=1, help="parts sent at once, joined by concatenation")
    upload.add_argument("--watch", action="store_true", help="then follow processing until it ends")
    status = commands.add_parser("status", parents=[common], help="print an upload's status as JSON")
    status.add_argument("upload", metavar="ID", help="upload id or URL")
    watch = commands.add_parser(
        "watch", parents=[common], help="follow an upload until it is ready or failed"
    )
    watch.add_argument("upload", metavar="ID", help="upload id or URL")
    download = commands.add_parser(
        "download", parents=[common], help="download an upload or a variant (resumable)"
    )
    download.add_argument("upload", metavar="ID", help="upload id or URL")
    download.add_argument("--variant", help="a variant's name, e.g. 256.webp")
    download.add_argument("-o", "--output", type=Path, help="file to write (default: the upload's file name)")


def _run_client(args: argparse.Namespace) -> int:
    from uploader.client import commands as client

    server = client.server_url(args.url)
    if args.command == "upload":
        try:
            chunk_size = client.parse_size(args.chunk_size)
        except ValueError as exc:
            client.stderr.print(f"[red]error[/]: {exc}")
            return 2
        return client.run(
            lambda: client.upload(args.files, server, chunk_size, args.parallel, args.watch, args.api_key)
        )
    if args.command == "status":
        return client.run(lambda: client.status(args.upload, server, args.api_key))
    if args.command == "watch":
        return client.run(lambda: client.watch(args.upload, server, args.api_key))
    return client.run(lambda: client.download(args.upload, server, args.variant, args.output, args.api_key))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="uploader", description="Resumable upload service.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the API (migrates the database first)")
    serve.add_argument("--host", help="address to listen on (default UPLOADER_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default UPLOADER_PORT or 8000)")
    commands.add_parser("migrate", help="apply database migrations")
    worker = commands.add_parser("worker", help="run a Celery worker for the processing pipeline")
    worker.add_argument("--concurrency", type=int, help="worker processes (default: one per core)")
    worker.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"])
    commands.add_parser("beat", help="run the periodic jobs (expiry, resending lost work)")
    commands.add_parser("ping-worker", help="exit 0 when this host's worker answers (health checks)")
    _client_commands(commands)
    args = parser.parse_args(argv)
    if args.command in CLIENT_COMMANDS:
        sys.exit(_run_client(args))

    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    if args.command == "serve":
        sys.exit(_serve(settings, args.host or settings.host, args.port or settings.port))
    if args.command == "worker":
        sys.exit(_worker(settings, args.concurrency, args.pool))
    if args.command == "beat":
        sys.exit(_beat(settings))
    if args.command == "ping-worker":
        sys.exit(_ping_worker(settings))
    sys.exit(_migrate(settings))
