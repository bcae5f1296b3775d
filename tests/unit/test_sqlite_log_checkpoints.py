"""SQLite's write-ahead log is copied back by a thread of its own, never inside a commit
on the event loop's thread; and the thread ends with its database."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from sqlalchemy import text

from uploader.db.engine import Database


def _checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sqlite-checkpoints"]


async def test_the_log_is_copied_back_by_a_thread_and_not_in_the_commits(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    db = Database(f"sqlite:///{path}")
    before = len(_checkpoint_threads())
    await db.run(lambda c: c.execute(text("CREATE TABLE t (n INTEGER, pad TEXT)")))
    # The kept connection leaves the log alone far past SQLite's 1,000 pages.
    assert await db.run(lambda c: c.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()) == 20_000
    assert len(_checkpoint_threads()) == before + 1
    for n in range(1500):  # a page and more each: 1,500 commits, well past 1,000 pages of log
        await db.run(
            lambda c, n=n: c.execute(text("INSERT INTO t VALUES (:n, :pad)"), {"n": n, "pad": "x" * 5000})
        )
    deadline = time.monotonic() + 5
    # Nothing else checkpoints (the kept connection stays far below its backstop): the
    # rows reach the database file itself only through the thread.
    while path.stat().st_size < 1500 * 5000:
        assert time.monotonic() < deadline, path.stat().st_size
        await asyncio.sleep(0.1)
    await db.dispose()
    assert len(_checkpoint_threads()) == before
