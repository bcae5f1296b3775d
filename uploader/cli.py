"""The ``uploader`` command: the service (``serve``, ``worker``, ``beat``, ``migrate``) and
its client (``upload``, ``status``, ``watch``, ``download``)."""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from uploader.kit.logging import configure_logging, get_logger
from uploader.settings import Settings
from uploader.webhooks import commands as webhook_commands

log = get_logger(__name__)


def _migrate(settings: Settings, wait: float | None) -> int:
    from uploader.db import migrate

    url = settings.resolved_database_url
    if wait is None:
        migrate.upgrade_to_head(url)
        log.info("database.migrated")
        return 0
    # Apply nothing: wait for the process that migrates (a deployment's migration job).
    pending = migrate.wait_for_head(
        url, wait, lambda left: log.info("database.migration_pending", pending=left)
    )
    if not pending:
        log.info("database.at_newest_revision")
        return 0
    log.error("database.migration_pending", pending=pending, waited_seconds=wait)
    return 1


def _worker(settings: Settings, concurrency: int | None, pool: str, metrics_port: int | None) -> int:
    if settings.processing != "celery":
        log.error("worker.not_configured", hint="set UPLOADER_PROCESSING=celery and UPLOADER_REDIS_URL")
        return 2
    if metrics_port is not None:
        from uploader.observability import metrics_server

        # Before anything imports the metrics: they are kept in files the pool shares.
        metrics_server.prepare_multiprocess()
        token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
        metrics_server.serve_metrics(settings.host, metrics_port, token)
        log.info("worker.metrics", url=f"http://{settings.host}:{metrics_port}/metrics")
    from uploader.observability import tracing

    # In the main process, before the pool forks: its processes inherit the instrumentation
    # and the span exporter (which restarts its thread in each child).
    tracing.configure("worker")
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

    from uploader.processing.celery_app import build_celery

    app = build_celery(settings)
    answers = app.control.ping(destination=[f"celery@{socket.gethostname()}"], timeout=3)
    return 0 if answers else 1


def _render_url(settings: Settings, args: argparse.Namespace) -> int:
    """Print a signed render URL; the operations are checked first, as the server will."""
    from uploader.kit.errors import ProblemError
    from uploader.renders.ops import parse_ops
    from uploader.renders.signing import signed_url

    if settings.render_key is None:
        print("uploader: set UPLOADER_RENDER_KEY to sign render URLs", file=sys.stderr)
        return 2
    try:
        parse_ops(args.ops)
    except ProblemError as exc:
        print(f"uploader: {exc.detail}", file=sys.stderr)
        return 2
    base = args.url or settings.public_url or f"http://{settings.host}:{settings.port}"
    print(signed_url(settings.render_key.get_secret_value(), args.upload_id, args.ops, base))
    return 0


def _keys(settings: Settings, args: argparse.Namespace) -> int:
    """``uploader keys create|list|revoke``: API keys kept in the database."""
    import json

    from uploader.auth import api_keys
    from uploader.auth.principal import OWNER_SCOPES, parse_scopes
    from uploader.db.engine import Database
    from uploader.db.migrate import upgrade_to_head

    upgrade_to_head(settings.resolved_database_url)
    db = Database(settings.resolved_database_url, settings.database_pool_size)

    async def run() -> int:
        try:
            if args.keys_command == "create":
                try:
                    scopes = parse_scopes(" ".join(args.scope)) if args.scope else OWNER_SCOPES
                except ValueError as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    return 2
                record, key = await db.run(
                    lambda c: api_keys.create(
                        c,
                        args.name,
                        args.principal or args.name,
                        scopes,
                        args.quota_bytes,
                        args.quota_active_uploads,
                    )
                )
                print(key)  # the only time the key is shown
                print(
                    f"key {record.id} for principal {record.principal!r}, scopes {' '.join(sorted(scopes))}; "
                    "keep it now: it is not stored",
                    file=sys.stderr,
                )
                return 0
            if args.keys_command == "list":
                for record in await db.run(api_keys.list_all):
                    print(
                        json.dumps(
                            {
                                "id": record.id,
                                "name": record.name,
                                "principal": record.principal,
                                "scopes": sorted(record.scopes),
                                "quota_bytes": record.quota_bytes,
                                "quota_active_uploads": record.quota_active_uploads,
                                "created_at": record.created_at.isoformat(),
                                "revoked_at": record.revoked_at.isoformat() if record.revoked_at else None,
                            }
                        )
                    )
                return 0
            if await db.run(lambda c: api_keys.revoke(c, args.id)):
                print(f"revoked {args.id}", file=sys.stderr)
                return 0
            print(f"error: no live key {args.id}", file=sys.stderr)
            return 1
        finally:
            await db.dispose()

    return asyncio.run(run())


def _token(settings: Settings, args: argparse.Namespace) -> int:
    """``uploader token SUB``: an HS256 upload token signed with UPLOADER_JWT_SECRET."""
    from uploader.auth.principal import parse_scopes
    from uploader.auth.tokens import mint_token
    from uploader.client.commands import parse_duration, parse_size

    if settings.jwt_secret is None:
        print("error: set UPLOADER_JWT_SECRET, the key tokens are signed with", file=sys.stderr)
        return 2
    try:
        scopes = parse_scopes(" ".join(args.scope)) if args.scope else None
        metadata = dict(pair.split("=", 1) for pair in args.metadata)
        token = mint_token(
            settings.jwt_secret.get_secret_value(),
            args.subject,
            ttl=parse_duration(args.ttl),
            scopes=scopes,
            max_size=parse_size(args.max_size) if args.max_size else None,
            types=args.types.split(",") if args.types else None,
            max_files=args.max_files,
            metadata=metadata or None,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def _access_commands(commands: Any) -> None:
    keys = commands.add_parser("keys", help="API keys kept in the database")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="make a key; prints it once")
    create.add_argument("name", help="what the key is for")
    create.add_argument("--principal", help="whose uploads it makes (default: the name)")
    create.add_argument(
        "--scope", action="append", help="upload, read, delete, admin (default: the first three)"
    )
    create.add_argument("--quota-bytes", type=int, help="bytes its principal may hold")
    create.add_argument("--quota-active-uploads", type=int, help="unfinished uploads at once")
    key_commands.add_parser("list", help="every key, as JSON lines (never the key itself)")
    revoke = key_commands.add_parser("revoke", help="revoke a key (every process within seconds)")
    revoke.add_argument("id", help="the key's id, as `keys list` shows it")
    token = commands.add_parser("token", help="mint an HS256 upload token (UPLOADER_JWT_SECRET)")
    token.add_argument("subject", metavar="SUB", help="the principal the token acts for")
    token.add_argument("--ttl", default="1h", help="lifetime, e.g. 90s, 15m, 1h, 7d (default 1h)")
    token.add_argument("--scope", action="append", help="upload, read, delete, admin (default: upload read)")
    token.add_argument("--max-size", help="bytes per file, e.g. 10MiB")
    token.add_argument("--types", help="media type patterns, comma-separated: image/*,application/pdf")
    token.add_argument("--max-files", type=int, help="files the token may make")
    token.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE", help="forced metadata")


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
    upload.add_argument(
        "--dedup",
        action="store_true",
        help="hash each file first and send nothing the server already holds (Repr-Digest)",
    )
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
            lambda: client.upload(
                args.files, server, chunk_size, args.parallel, args.watch, args.api_key, dedup=args.dedup
            )
        )
    if args.command == "status":
        return client.run(lambda: client.status(args.upload, server, args.api_key))
    if args.command == "watch":
        return client.run(lambda: client.watch(args.upload, server, args.api_key))
    return client.run(lambda: client.download(args.upload, server, args.variant, args.output, args.api_key))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="uploader", description="Resumable upload service.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the API (migrates the database first)")
    serve.add_argument("--host", help="address to listen on (default UPLOADER_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default UPLOADER_PORT or 8000)")
    serve.add_argument(
        "--workers",
        type=int,
        help="server processes sharing the port (default UPLOADER_WORKERS or 1; more need PostgreSQL "
        "and Redis)",
    )
    migrate = commands.add_parser("migrate", help="apply database migrations")
    migrate.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        help="apply nothing: wait until another process has migrated the database (exit 1 after SECONDS)",
    )
    worker = commands.add_parser("worker", help="run a Celery worker for the processing pipeline")
    worker.add_argument("--concurrency", type=int, help="worker processes (default: one per core)")
    worker.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"])
    worker.add_argument(
        "--metrics-port", type=int, help="serve Prometheus metrics at http://UPLOADER_HOST:PORT/metrics"
    )
    commands.add_parser("beat", help="run the periodic jobs (expiry, resending lost work)")
    commands.add_parser("ping-worker", help="exit 0 when this host's worker answers (health checks)")
    render_url = commands.add_parser("render-url", help="print a signed render URL (UPLOADER_RENDER_KEY)")
    render_url.add_argument("upload_id")
    render_url.add_argument("ops", help="w_300,h_200,fit_cover,f_webp,q_80")
    render_url.add_argument("--url", default=None, help="base URL (default: UPLOADER_PUBLIC_URL)")
    _client_commands(commands)
    _access_commands(commands)
    webhook_commands.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command in CLIENT_COMMANDS:
        sys.exit(_run_client(args))

    try:
        settings = Settings()
    except ValidationError as exc:  # a setting out of range: say which, without a traceback
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "settings"
            print(f"error: {where}: {error['msg']}", file=sys.stderr)
        sys.exit(2)
    configure_logging(settings.log_level, settings.log_json)
    if args.command == "serve":
        from uploader import serving

        workers = args.workers or settings.workers
        sys.exit(serving.serve(settings, args.host or settings.host, args.port or settings.port, workers))
    if args.command == "worker":
        sys.exit(_worker(settings, args.concurrency, args.pool, args.metrics_port))
    if args.command == "beat":
        sys.exit(_beat(settings))
    if args.command == "ping-worker":
        sys.exit(_ping_worker(settings))
    if args.command == "render-url":
        sys.exit(_render_url(settings, args))
    if args.command == "keys":
        sys.exit(_keys(settings, args))
    if args.command == "token":
        sys.exit(_token(settings, args))
    if args.command == "webhooks":
        sys.exit(webhook_commands.run(settings, args))
    sys.exit(_migrate(settings, args.wait))
