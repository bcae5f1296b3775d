"""Which outbox events a dispatcher claims, on SQLite (one statement) and PostgreSQL
(heads, then their followers): only due, unleased events, each with every earlier
undelivered event of its upload, in order, never more uploads than the batch; and at a
cost set by the batch, not by the backlog."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, insert, select, text, update

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
    # The batch counts heads: one upload, with every event of it.
    assert await claim(db, batch=1) == [("a", "upload.received"), ("a", "upload.ready")]
    assert await claim(db, batch=1) == [("b", "upload.received"), ("b", "upload.ready")]
    assert await claim(db, batch=1) == []


async def fill_backlog(db: Database, events: int) -> None:
    """``events`` undelivered events, two per upload, all due (a receiver back after an
    outage), behind as many delivered ones."""
    now = utcnow() - timedelta(seconds=1)
    rows = [
        {
            "id": f"whd_{status}_{n}",
            "upload_id": f"{status[0]}{n // 2:031d}",
            "owner": "anonymous",
            "type": "upload.received" if n % 2 == 0 else "upload.ready",
            "body": "{}",
            "created_at": now,
            "status": status,
            "attempts": 0,
            "next_attempt_at": now,
        }
        for status in (outbox.DELIVERED, outbox.PENDING)
        for n in range(events)
    ]
    await db.run(lambda c: c.execute(insert(webhook_outbox), rows))
    if not db.url.startswith("sqlite"):
        # PostgreSQL plans from the table's statistics, as autovacuum keeps them. (With
        # none it takes the table for a few rows and sorts what is due: linear in the
        # backlog, where it read every pending event for each before the ``status || ''``.)
        await db.run(lambda c: c.execute(text("ANALYZE webhook_outbox")))


def claim_work(c: Connection, batch: int) -> tuple[int, list[outbox.Claimed]]:
    """The work of one claim, in the database's own units: SQLite's virtual machine steps
    (in hundreds), or the rows and index entries PostgreSQL read for it."""
    if c.dialect.name == "sqlite":
        steps = [0]

        def step() -> int:
            steps[0] += 1
            return 0

        driver = c.connection.driver_connection
        assert driver is not None
        driver.set_progress_handler(step, 100)
        try:
            claimed, _ = outbox.claim(c, batch, 60)
        finally:
            driver.set_progress_handler(None, 0)
        return steps[0], claimed
    read = text(
        "SELECT sum(pg_stat_get_xact_tuples_returned(oid) + pg_stat_get_xact_tuples_fetched(oid))"
        " FROM pg_class WHERE oid = 'webhook_outbox'::regclass OR oid IN"
        " (SELECT indexrelid FROM pg_index WHERE indrelid = 'webhook_outbox'::regclass)"
    )
    before = c.execute(read).scalar_one()
    claimed, _ = outbox.claim(c, batch, 60)
    return int(c.execute(read).scalar_one() - before), claimed


async def test_a_claim_costs_what_it_takes_not_what_waits(db: Database) -> None:
    """After an outage the whole backlog is due at once. A claim sorted every due event
    by ``seq`` before taking 50 (on SQLite it also checked each for an earlier one):
    with 40,000 events waiting, 26 to 50 ms of the API's event loop per claim, and a
    drain that took time growing with the backlog's square."""
    work = {}
    for events in (2_000, 20_000):
        await empty_tables(db.url)
        await fill_backlog(db, events)
        work[events], claimed = await db.run(lambda c: claim_work(c, 50))
        # The 50 uploads that fell due first (here: all at once, so any 50), each whole.
        uploads = {d.upload_id for d in claimed}
        assert len(uploads) == 50
        assert len(claimed) == 100
        assert all(d.upload_id.startswith("p") for d in claimed)
    assert work[20_000] < 2 * work[2_000], work


async def test_events_behind_a_failed_one_wait_for_its_retry(db: Database) -> None:
    """An upload's later events are not tried before its failed one; they are due when it
    is, so that a receiver's outage leaves no due event to step over at every poll."""
    await record(db, "a" * 32)
    claimed, _ = await db.run(lambda c: outbox.claim(c, 50, 60))
    first, second = claimed
    outcomes = [(first, "receiver answered 503"), (second, outbox.SKIPPED)]
    await db.run(lambda c: outbox.settle(c, outcomes, max_attempts=5, backoff=lambda attempts: 300.0))
    rows = await db.run(
        lambda c: c.execute(
            select(_c.seq, _c.attempts, _c.next_attempt_at, _c.lease_until).order_by(_c.seq)
        ).all()
    )
    assert [(row.attempts, row.lease_until) for row in rows] == [(1, None), (0, None)]
    assert rows[0].next_attempt_at == rows[1].next_attempt_at > utcnow() + timedelta(seconds=200)
    assert await claim(db) == []
