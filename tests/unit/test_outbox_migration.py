"""Migration 0009 turns each outbox row's data into the body its deliveries POST, and back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import fresh_postgres_database, run_in_thread
from uploader.db.engine import Database
from uploader.db.migrate import migrate_to, upgrade_to_head
from uploader.db.models import webhook_outbox

CREATED = datetime(2026, 11, 28, 1, 12, 33, 820000, tzinfo=UTC)
DATA = {"state": "ready", "sha256": "ab" * 32, "metadata": {"filename": "été.jpg"}}


@pytest.fixture(params=["sqlite", "postgres"])
def database_at_0008(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'outbox.db'}"
        migrate_to(url, "0008")
        yield url
    else:
        with fresh_postgres_database() as url:
            migrate_to(url, "0008", down=True)
            yield url


def _run(url: str, work: Any) -> Any:
    """``work(connection)`` in one transaction of the project's own engine."""

    async def once() -> Any:
        db = Database(url)
        try:
            return await db.run(work)
        finally:
            await db.dispose()

    return run_in_thread(once())


def test_rows_written_before_get_the_body_their_deliveries_post(database_at_0008: str) -> None:
    url = database_at_0008
    old = sa.table(
        "webhook_outbox",
        *(sa.column(name) for name in ("id", "upload_id", "owner", "type", "status", "attempts")),
        sa.column("data", sa.JSON()),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("next_attempt_at", sa.DateTime(timezone=True)),
    )
    naive = url.startswith("sqlite")  # SQLite keeps them naive, in UTC
    when = CREATED.replace(tzinfo=None) if naive else CREATED
    rows_before = [
        {
            "id": f"whd_{index}",
            "upload_id": "u" * 32,
            "owner": "alice",
            "type": "upload.ready",
            "status": status,
            "attempts": 0,
            "data": DATA,
            "created_at": when,
            "next_attempt_at": when,
        }
        for index, status in enumerate(("pending", "delivered", "dead"))
    ]
    _run(url, lambda c: c.execute(sa.insert(old), rows_before))
    upgrade_to_head(url)
    rows = _run(url, lambda c: c.execute(sa.select(webhook_outbox.c.id, webhook_outbox.c.body)).all())
    assert len(rows) == 3
    for delivery_id, body in rows:
        assert json.loads(body) == {
            "id": delivery_id,
            "type": "upload.ready",
            "created_at": CREATED.isoformat(),
            "upload_id": "u" * 32,
            "owner": "alice",
            "data": DATA,
        }
    # And back: the data again, from the body.
    migrate_to(url, "0008", down=True)
    kept = _run(url, lambda c: c.execute(sa.select(old.c.id, old.c.data)).all())
    assert {delivery_id: data for delivery_id, data in kept} == {f"whd_{i}": DATA for i in range(3)}
