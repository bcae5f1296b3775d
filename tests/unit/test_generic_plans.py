"""The hot path's statements find an upload by its id in whatever plan PostgreSQL keeps.

asyncpg prepares each statement once per connection; after five executions PostgreSQL
may keep a generic plan for it, planned without the values. On a new deployment the
table is empty then, every way to the row looks as cheap, and a plan that scans the
table (or every upload in a state) would be kept while the table grows: each claim read
the whole table, and a process slowed with every upload it took.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import asyncpg
import pytest
from sqlalchemy.dialects import postgresql

from tests.conftest import fresh_postgres_database
from uploader.db.driver import DriverStatement
from uploader.uploads import repository


@pytest.fixture(scope="module")
def empty_database() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url.replace("postgresql+asyncpg://", "postgresql://")


def hot_statements() -> dict[str, DriverStatement]:
    names = ("offset", "state", "updated_at", "expires_at", "writer_active")
    return {
        "status read": repository._GET,
        "claim for writing": repository._CLAIM_RETURNING,
        "claim after a read": repository._CLAIM_AFTER_READ,
        "a write's record": repository._update(names, "fenced"),
        "a change of state": repository._update(("state", "updated_at"), "state"),
        "a change": repository._update(("processing", "updated_at"), None),
    }


@pytest.mark.parametrize("name", list(hot_statements()))
async def test_a_generic_plan_made_on_an_empty_table_finds_the_row_by_its_id(
    empty_database: str, name: str
) -> None:
    compiled = hot_statements()[name].compiled_for(postgresql.asyncpg.dialect())  # type: ignore[attr-defined]
    generic = {"plan_cache_mode": "force_generic_plan"}  # the plan kept after five executions
    connection = await asyncpg.connect(empty_database, server_settings=generic)
    try:
        await connection.execute(f"PREPARE hot AS {compiled.sql}")
        nulls = ", ".join("NULL" for _ in compiled.names)
        plan = "\n".join(row[0] for row in await connection.fetch(f"EXPLAIN EXECUTE hot({nulls})"))
    finally:
        await connection.close()
    # Every read of the table: its kind, and the index it goes through.
    scans = re.findall(r"(\w+(?: \w+)* Scan)(?: using (\w+))? on uploads\b", plan)
    assert scans, plan
    assert all(scan == ("Index Scan", "ix_uploads_id") for scan in scans), plan
