"""On PostgreSQL the usage trigger runs only when a counted column changes (migration 0011):
a write's claim, which every PATCH makes, no longer runs its function; a change of state
still counts, and the migration goes back to the trigger before it."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import asyncpg
import pytest

from tests.conftest import fresh_postgres_database, run_in_thread
from uploader.db.migrate import migrate_to, upgrade_to_head


@pytest.fixture
def database() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


async def _usage_function_calls(url: str) -> tuple[int, int, tuple[int, int]]:
    """How often a claim and then a change of state ran the usage function, and the
    owner's usage (bytes, unfinished uploads) after both."""
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    owner, upload_id = f"o-{secrets.token_hex(4)}", secrets.token_hex(16)
    calls = "SELECT coalesce(sum(calls), 0) FROM pg_stat_xact_user_functions WHERE funcname = 'uploads_usage'"
    try:
        await connection.execute("SET track_functions = 'pl'")
        await connection.execute(
            'INSERT INTO uploads (id, owner, state, length, "offset", storage_key, meta, concat_role, '
            "created_at, updated_at) VALUES ($1, $2, 'receiving', 1000, 0, $1, '{}', 'none', now(), now())",
            upload_id,
            owner,
        )
        async with connection.transaction():
            # (The counts may include the insert's until they are reported: differences.)
            before = int(await connection.fetchval(calls))
            await connection.execute(
                "UPDATE uploads SET writer_generation = 7, writer_active = true WHERE id = $1", upload_id
            )
            by_claim = int(await connection.fetchval(calls)) - before
            await connection.execute("UPDATE uploads SET state = 'received' WHERE id = $1", upload_id)
            by_both = int(await connection.fetchval(calls)) - before
        row = await connection.fetchrow(
            "SELECT bytes, active_uploads FROM principal_usage WHERE owner = $1", owner
        )
        assert row is not None
        return by_claim, by_both - by_claim, (row["bytes"], row["active_uploads"])
    finally:
        await connection.close()


def test_a_claim_does_not_run_the_usage_function_and_a_change_of_state_counts(database: str) -> None:
    assert run_in_thread(_usage_function_calls(database)) == (0, 1, (1000, 0))
    migrate_to(database, "0010", down=True)
    assert run_in_thread(_usage_function_calls(database)) == (1, 1, (1000, 0))  # the trigger before
    upgrade_to_head(database)
    assert run_in_thread(_usage_function_calls(database)) == (0, 1, (1000, 0))
