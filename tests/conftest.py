"""Shared fixtures: the API on SQLite and on PostgreSQL, and a real server process."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
from sqlalchemy import text

from tests.support import LiveServer, in_process_client, start_server
from uploader.db.engine import Database
from uploader.db.migrate import upgrade_to_head
from uploader.settings import Settings

POSTGRES_ADMIN_DSN = os.environ.get(
    "UPLOADER_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
T = TypeVar("T")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


async def _postgres_reachable() -> bool:
    try:
        connection = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await connection.close()
    return True


def run_in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on its own loop (fixtures run beside the test loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _admin(sql: str) -> None:
    admin = await asyncpg.connect(POSTGRES_ADMIN_DSN)
    try:
        await admin.execute(sql)
    finally:
        await admin.close()


async def _empty_uploads(url: str) -> None:
    db = Database(url)
    await db.run(lambda session: session.execute(text("DELETE FROM uploads")))
    await db.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test process, dropped at the end."""
    if not run_in_thread(_postgres_reachable()):
        if IN_CI:
            pytest.fail(f"PostgreSQL is required in CI but {POSTGRES_ADMIN_DSN} does not answer")
        pytest.skip("PostgreSQL is not running")
    name = f"uploader_test_{os.getpid()}_{secrets.token_hex(3)}"
    run_in_thread(_admin(f'CREATE DATABASE "{name}"'))
    base = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    url = f"{base}/{name}"
    upgrade_to_head(url)
    yield url
    run_in_thread(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("sqlite") / "uploader.db"
    url = f"sqlite+aiosqlite:///{path}"
    upgrade_to_head(url)
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each API test runs on both databases, starting from an empty table."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    run_in_thread(_empty_uploads(url))
    return url


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        database_url=database_url,
        cleanup_interval_seconds=3600,
        checkpoint_bytes=256 * 1024,
    )


@pytest.fixture
async def app_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process_client(settings) as client:
        yield client


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[LiveServer]:
    """A real ``uploader serve`` process on loopback with the embedded default."""
    server = start_server(tmp_path / "server")
    try:
        yield server
    finally:
        server.stop()
