"""Which outbox events a dispatcher claims, on SQLite (one statement) and PostgreSQL
(heads, then their followers): only due, unleased events, each with every earlier
undelivered event of its upload, in order, never past the batch."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from tests.conftest import _empty_uploads as empty_tables
from tests.unit.test_driver_statements import upload
from uploader.db.engine import Database
from uploader.db.models import ConcatRole, utcnow, webhook_outbox
from uploader.webhooks import outbox

_c = webhook_outbox.c
EVENTS = [("upload.received", {"n": 1}), ("upload.ready", {"n": 2})]


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest) -> AsyncIterator[Database]:
    url: str = request.getfixturevalue(f"{request.param}_url")
    await empty_tables(url)
    database = Database(url)
    yield database
    await database.dispose()


async def record(db: Database, *upload_ids: str) -> None:
    for upload_id in upload_ids:
        whole = replace(upload(upload_id), concat_role=ConcatRole.NONE)
        await db.run(lambda c, whole=whole: outbox.record(c, whole, EVENTS))


async def claim(db: Database, batch: int = 50) -> list[tuple[str, str]]:
    claimed, _ = await db.run(lambda c: outbox.claim(c, batch, 60))
    return [(d.upload_id[-1], d.type) for d in claimed]


async def change(db: Database, upload_id: str, event_type: str, **values: Any) -> None:
    await db.run(
        lambda c: c.execute(
            update(webhook_outbox).where(_c.upload_id == upload_id, _c.type == event_type).values(**values)
        )
    )


async def test_each_upload_comes_whole_and_in_order(db: Database) -> None:
    await record(db, "a" * 32, "b" * 32)
    assert await claim(db) == [
        ("a", "upload.received"),
        ("a", "upload.ready"),
        ("b", "upload.received"),
        ("b", "upload.ready"),
    ]
    assert await claim(db) == []  # leased: nobody else takes them


async def test_an_event_waits_behind_an_earlier_one_that_is_not_due_or_is_leased(db: Database) -> None:
    await record(db, "a" * 32, "b" * 32, "c" * 32)
    later = utcnow() + timedelta(minutes=5)
    # a: its first event failed and waits for its retry; b: its first is out with another
    # dispatcher; c: its first was delivered.
    await change(db, "a" * 32, "upload.received", next_attempt_at=later, attempts=1)
    await change(db, "b" * 32, "upload.received", lease_until=later)
    await change(db, "c" * 32, "upload.received", status=outbox.DELIVERED)
    assert await claim(db) == [("c", "upload.ready")]


async def test_a_batch_ends_at_its_size_and_the_rest_follows_in_order(db: Database) -> None:
    await record(db, "a" * 32, "b" * 32)
    first = await claim(db, batch=3)
    if db.url.startswith("sqlite"):
        assert first == [("a", "upload.received"), ("a", "upload.ready"), ("b", "upload.received")]
        # b's second event waits while its first is leased, then comes once that is settled.
        assert await claim(db, batch=3) == []
        await change(db, "b" * 32, "upload.received", status=outbox.DELIVERED, lease_until=None)
        assert await claim(db, batch=3) == [("b", "upload.ready")]
    else:  # three heads at most, each with its followers
        assert first == [
            ("a", "upload.received"),
            ("a", "upload.ready"),
            ("b", "upload.received"),
            ("b", "upload.ready"),
        ]
