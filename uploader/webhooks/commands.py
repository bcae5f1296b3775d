"""``uploader webhooks list|retry``: the outbox's deliveries, and sending dead ones again."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any

from uploader.settings import Settings
from uploader.webhooks import outbox

if TYPE_CHECKING:
    from uploader.db.engine import Database


def add_commands(commands: Any) -> None:
    webhooks = commands.add_parser("webhooks", help="webhook deliveries: list them, send dead ones again")
    webhook_commands = webhooks.add_subparsers(dest="webhooks_command", required=True)
    listing = webhook_commands.add_parser("list", help="deliveries, newest first, as JSON lines")
    listing.add_argument("--status", choices=outbox.STATUSES, help="only these")
    listing.add_argument("--upload", help="only this upload's")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    retry = webhook_commands.add_parser("retry", help="send a delivery again, or every dead one")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", help="a delivery's id (X-Uploader-Delivery)")
    which.add_argument("--all-failed", action="store_true", help="every dead-lettered delivery")
    deliver = webhook_commands.add_parser(
        "deliver", help="deliver from the outbox until stopped (UPLOADER_WEBHOOK_DISPATCHER=process)"
    )
    deliver.add_argument(
        "--metrics-port", type=int, help="serve Prometheus metrics at http://UPLOADER_HOST:PORT/metrics"
    )


def run(settings: Settings, args: argparse.Namespace) -> int:
    from uploader.db.engine import Database
    from uploader.db.migrate import upgrade_to_head

    upgrade_to_head(settings.resolved_database_url)
    db = Database(settings.resolved_database_url, settings.database_pool_size)
    if args.webhooks_command == "deliver":
        if args.metrics_port is not None:
            from uploader.observability import metrics_server

            token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
            metrics_server.serve_metrics(settings.host, args.metrics_port, token)
        return _deliver(settings, db)

    async def main() -> int:
        try:
            if args.webhooks_command == "list":
                deliveries = await db.run(
                    lambda c: outbox.page(c, status=args.status, upload_id=args.upload, limit=args.limit)
                )
                for delivery in deliveries:
                    print(json.dumps(delivery.as_json()))
                return 0
            count = await db.run(lambda c: outbox.retry(c, args.id, all_dead=args.all_failed))
            if args.id and not count:
                print(f"error: no delivery {args.id}", file=sys.stderr)
                return 1
            print(f"{count} deliveries will be sent again", file=sys.stderr)
            return 0
        finally:
            await db.dispose()

    return asyncio.run(main())


def _deliver(settings: Settings, db: Database) -> int:
    """A dispatcher of its own: it polls the outbox every ``UPLOADER_WEBHOOK_POLL_SECONDS``
    and delivers what is due, beside any other dispatcher, until SIGTERM or SIGINT."""
    import signal

    from uploader.kit.logging import get_logger
    from uploader.webhooks.delivery import OutboxDispatcher

    log = get_logger(__name__)
    if not settings.webhook_url:
        print("error: set UPLOADER_WEBHOOK_URL (and UPLOADER_WEBHOOK_SECRET)", file=sys.stderr)
        return 2

    async def main() -> int:
        dispatcher = OutboxDispatcher(settings, db)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        delivering = asyncio.create_task(dispatcher.run())
        log.info("webhooks.dispatcher_started", every_seconds=settings.webhook_poll_seconds)
        await stop.wait()
        await dispatcher.stop(delivering)
        await dispatcher.close()
        await db.dispose()
        log.info("webhooks.dispatcher_stopped")
        return 0

    return asyncio.run(main())
