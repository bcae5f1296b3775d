"""``uploader webhooks list|retry``: the outbox's deliveries, and sending dead ones again."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from uploader.settings import Settings
from uploader.webhooks import outbox


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


def run(settings: Settings, args: argparse.Namespace) -> int:
    from uploader.db.engine import Database
    from uploader.db.migrate import upgrade_to_head

    upgrade_to_head(settings.resolved_database_url)
    db = Database(settings.resolved_database_url)

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
