"""On PostgreSQL, work whose statements each stand alone runs on a connection of
asyncpg's, past SQLAlchemy's execution: it stores and reads exactly what SQLAlchemy
would, and a connection that died with its server costs no caller an error."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event

from uploader.db.engine import Database
from uploader.db.models import Upload, UploadState, utcnow
from uploader.uploads import repository


@pytest.fixture
async def db(postgres_url: str) -> AsyncIterator[Database]:
    database = Database(postgres_url, pool_size=4)
    yield database
    await database.dispose()


def counting_sqlalchemy_statements(db: Database) -> list[str]:
    """The statements SQLAlchemy's own execution sends from now on."""
    assert db._async is not None
    sent: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(statement)

    event.listen(db._async.sync_engine, "before_cursor_execute", before)
    return sent


def an_upload() -> Upload:
    now = utcnow()
    return Upload(
        id=secrets.token_hex(16),
        owner="alice",
        storage_key=f"k/{secrets.token_hex(8)}",
        state=UploadState.RECEIVING,
        length=1234,
        offset=56,
        meta={"filename": "ré.jpg", "note": None},
        filename="ré.jpg",
        concat_parts=["a", "b"],
        processing={"steps": {"sniff": {"state": "done", "at": 1.5}}},
        variants=[{"name": "thumb", "width": 256}],
        created_at=now,
        updated_at=now,
        expires_at=now + timedelta(days=1),
        allowed_types=["image/*"],
        size_limit=99,
    )


async def test_work_that_stands_alone_runs_on_the_driver_and_stores_what_sqlalchemy_would(
    db: Database,
) -> None:
    sent = counting_sqlalchemy_statements(db)
    upload = an_upload()
    await db.run(lambda s: repository.insert(s, upload), transaction=False)
    assert upload.seq is not None  # the id the insert returned
    on_driver = await db.run(lambda s: repository.get(s, upload.id), transaction=False)
    assert sent == []  # neither went through SQLAlchemy's execution

    through_sqlalchemy = await db.run(lambda s: repository.get(s, upload.id))
    assert len(sent) == 1
    assert on_driver == through_sqlalchemy
    assert on_driver is not None
    assert on_driver.meta == {"filename": "ré.jpg", "note": None}
    assert on_driver.processing == {"steps": {"sniff": {"state": "done", "at": 1.5}}}
    assert on_driver.expires_at == upload.expires_at
    assert on_driver.expires_at is not None
    assert on_driver.expires_at.tzinfo is not None


async def test_a_claim_and_a_guarded_record_on_the_driver(db: Database) -> None:
    upload = an_upload()
    await db.run(lambda s: repository.insert(s, upload), transaction=False)
    sent = counting_sqlalchemy_statements(db)

    claimed = await db.run(lambda s: repository.claim_for_writing(s, upload.id, 7), transaction=False)
    assert claimed is not None
    mine, left_open = claimed
    assert (mine.writer_generation, mine.writer_active, left_open) == (7, True, False)
    # An older writer can no longer record; the claim's holder can.
    older = await db.run(lambda s: repository.record_write(s, mine, 6, offset=99), transaction=False)
    assert older is False
    recorded = await db.run(
        lambda s: repository.record_write(s, mine, 7, offset=100, writer_active=False), transaction=False
    )
    assert recorded is True
    # A newer writer finds the write closed; an older one claims nothing and reads the row.
    again = await db.run(lambda s: repository.claim_for_writing(s, upload.id, 9), transaction=False)
    assert again is not None
    assert again[1] is False
    assert again[0].offset == 100
    stale = await db.run(lambda s: repository.claim_for_writing(s, upload.id, 8), transaction=False)
    assert stale is not None
    assert stale[0].writer_generation == 9
    assert await db.run(lambda s: repository.claim_for_writing(s, "0" * 32, 10), transaction=False) is None
    assert sent == []


async def test_connections_that_died_with_their_server_cost_no_caller_an_error(
    db: Database, postgres_url: str
) -> None:
    upload = an_upload()
    await db.run(lambda s: repository.insert(s, upload), transaction=False)
    # Both connections kept aside are opened and idle.
    first = await db._driver_pool.acquire()
    second = await db._driver_pool.acquire()
    pids = {first.driver_connection.get_server_pid(), second.driver_connection.get_server_pid()}  # type: ignore[union-attr]
    db._driver_pool.release(first)
    db._driver_pool.release(second)
    # Their server processes end, as in a restart of PostgreSQL.
    admin = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        for pid in pids:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()

    read = await db.run(lambda s: repository.get(s, upload.id), transaction=False)
    assert read is not None
    assert read.id == upload.id
    again = await db._driver_pool.acquire()
    try:
        assert again.driver_connection.get_server_pid() not in pids  # type: ignore[union-attr]
    finally:
        db._driver_pool.release(again)
