"""Shared fixtures: the API on SQLite and on PostgreSQL, and a real server process."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
from sqlalchemy import text

from tests.scanning import ClamdServer, clamd_installed
from tests.support import (
    S3_TEST_BUCKET,
    S3_TEST_ENV,
    LiveServer,
    in_process_client,
    start_moto_server,
    start_server,
)
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
    """No uploads, no API keys, no counted tokens: every test starts open and empty."""
    db = Database(url)
    for table in ("uploads", "api_keys", "token_uses", "principal_usage", "webhook_outbox"):
        await db.run(lambda session, table=table: session.execute(text(f"DELETE FROM {table}")))
    await db.dispose()


def _require_postgres() -> None:
    if not run_in_thread(_postgres_reachable()):
        if IN_CI:
            pytest.fail(f"PostgreSQL is required in CI but {POSTGRES_ADMIN_DSN} does not answer")
        pytest.skip("PostgreSQL is not running")


@contextmanager
def empty_postgres_database() -> Iterator[str]:
    """A new PostgreSQL database with no tables, dropped afterwards."""
    _require_postgres()
    name = f"uploader_test_{os.getpid()}_{secrets.token_hex(3)}"
    run_in_thread(_admin(f'CREATE DATABASE "{name}"'))
    base = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield f"{base}/{name}"
    finally:
        run_in_thread(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new, migrated PostgreSQL database, dropped afterwards."""
    with empty_postgres_database() as url:
        upgrade_to_head(url)
        yield url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test process, dropped at the end."""
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("sqlite") / "uploader.db"
    url = f"sqlite+aiosqlite:///{path}"
    upgrade_to_head(url)
    return url


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server over real HTTP, one per test process, with the test bucket."""
    for name, value in S3_TEST_ENV.items():
        os.environ.setdefault(name, value)
    server = start_moto_server()
    try:
        yield server.url
    finally:
        server.stop()


# The API suite runs on both databases with local storage, and on PostgreSQL with S3.
BACKENDS = ["sqlite+local", "postgres+local", "postgres+s3"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    database, storage = request.param.split("+")
    return database, storage


@pytest.fixture
def database_url(request: pytest.FixtureRequest, backend: tuple[str, str]) -> str:
    """An empty uploads table on the backend's database."""
    url: str = request.getfixturevalue(f"{backend[0]}_url")
    run_in_thread(_empty_uploads(url))
    return url


@pytest.fixture
def settings(
    request: pytest.FixtureRequest, backend: tuple[str, str], database_url: str, tmp_path: Path
) -> Settings:
    storage: dict[str, Any] = {}
    if backend[1] == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        storage = {
            "storage_url": f"s3://{S3_TEST_BUCKET}/{secrets.token_hex(6)}",
            "s3_endpoint_url": endpoint,
            "s3_part_size": 5 * 1024 * 1024,
        }
    return Settings(
        data_dir=tmp_path,
        database_url=database_url,
        cleanup_interval_seconds=3600,
        checkpoint_bytes=256 * 1024,
        **storage,
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


@pytest.fixture(scope="session")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdServer]:
    """Debian's clamd with a signature database of the tests' own; required in CI."""
    if not clamd_installed():
        if IN_CI:
            pytest.fail("clamd (Debian's clamav-daemon) is required in CI")
        pytest.skip("clamd is not installed")
    server = ClamdServer(tmp_path_factory.mktemp("clamd"), stream_max_bytes=2 * 1024 * 1024)
    server.start()
    try:
        yield server
    finally:
        server.stop()


REDIS_URL = os.environ.get("UPLOADER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The machine's Redis; required in CI."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError:
        if IN_CI:
            pytest.fail(f"Redis is required in CI but {REDIS_URL} does not answer")
        pytest.skip("Redis is not running")
    return REDIS_URL
