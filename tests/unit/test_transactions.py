"""On PostgreSQL, work whose statements stand alone runs without ``BEGIN`` and ``COMMIT``
(round trips that cost a small upload a third of the full stack's throughput), and work
that must be atomic still has its transaction: a completion and its webhook events."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection

from tests.api.helpers import upload_bytes
from tests.support import in_process_client
from uploader.settings import Settings


def counting_transactions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many transactions the PostgreSQL driver has begun (one ``BEGIN`` each)."""
    begun = [0]
    real = AsyncAdapt_asyncpg_connection._start_transaction

    async def counted(self: AsyncAdapt_asyncpg_connection) -> None:
        if self.isolation_level != "autocommit":  # the driver then sends no BEGIN
            begun[0] += 1
        await real(self)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(AsyncAdapt_asyncpg_connection, "_start_transaction", counted)
    return begun


@pytest.mark.parametrize("webhooks", [False, True], ids=["plain", "webhooks"])
async def test_a_small_upload_opens_a_transaction_only_for_its_outbox_rows(
    postgres_url: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, webhooks: bool
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url=postgres_url,
        redis_url=redis_url,  # locks across processes: the write is claimed in the database
        redis_prefix=f"test-{secrets.token_hex(4)}",
        processing="celery",  # tasks queued for no worker: the request's own work only
        webhook_url="http://127.0.0.1:9/hooks" if webhooks else None,
        webhook_secret="secret" if webhooks else None,
        webhook_allow_private=True,
        webhook_dispatcher="process",  # nothing delivers here
    )
    async with in_process_client(settings) as client:
        await upload_bytes(client, b"x" * 300_000, chunk=300_000)  # warm: migrations, caches
        begun = counting_transactions(monkeypatch)
        path = await upload_bytes(client, b"y" * 300_000, chunk=300_000)
        assert (await client.get(f"/api/v1/uploads/{path.rsplit('/', 1)[1]}")).json()["state"] == "received"
    # Creation, claim, completion and the status read stand alone; with webhooks the
    # completion writes its outbox rows in the same transaction.
    assert begun[0] == (1 if webhooks else 0)
