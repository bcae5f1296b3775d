"""Apply Alembic migrations programmatically (``uploader migrate`` and start-up)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

T = TypeVar("T")
_HERE = Path(__file__).parent


def alembic_config(database_url: str) -> Config:
    config = Config(str(_HERE / "alembic.ini"))
    config.set_main_option("script_location", str(_HERE / "migrations"))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade_to_head(database_url: str) -> None:
    """Migrate to the newest revision; safe to call from inside a running event loop."""
    migrate_to(database_url, "head")


def migrate_to(database_url: str, revision: str, *, down: bool = False) -> None:
    """Upgrade (or with ``down``, downgrade) to ``revision``."""
    if database_url.startswith("sqlite"):
        path = database_url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    step = command.downgrade if down else command.upgrade
    # env.py drives an async engine with asyncio.run, which needs a thread without a loop.
    _in_own_thread(lambda: step(alembic_config(database_url), revision))


def _in_own_thread(work: Callable[[], T]) -> T:
    """``work()`` on a thread of its own, for asyncio.run from inside a running loop."""
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(work())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="alembic")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return results[0]


def pending_revisions(database_url: str) -> list[str]:
    """The revisions newer than the database's, oldest first (empty: at the newest)."""
    script = ScriptDirectory.from_config(alembic_config(database_url))

    def current(connection: Connection) -> tuple[str, ...]:
        return MigrationContext.configure(connection).get_current_heads()

    async def read() -> tuple[str, ...]:
        engine = create_async_engine(database_url)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(current)
        finally:
            await engine.dispose()

    heads = _in_own_thread(lambda: asyncio.run(read()))
    newer = script.iterate_revisions("heads", heads or "base")
    return [revision.revision for revision in reversed(list(newer)) if revision.revision not in heads]


def wait_for_head(database_url: str, timeout: float, on_pending: Callable[[list[str]], None]) -> list[str]:
    """Poll until another process (a migration job) has applied every revision; what is
    still pending when ``timeout`` runs out (empty: the database is at the newest)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pending = pending_revisions(database_url)
        except Exception as exc:  # the database not up yet: a job or a pod starting beside it
            pending = [f"unreachable: {type(exc).__name__}"]
        if not pending or time.monotonic() >= deadline:
            return pending
        on_pending(pending)
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
