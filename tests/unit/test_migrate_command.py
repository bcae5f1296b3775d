"""``uploader migrate``: several at once on one PostgreSQL database (API pods starting
together, beside the migration Job) take turns; ``--wait`` applies nothing and waits
until another process has brought the database to the newest revision."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import empty_postgres_database
from tests.support import free_port, start_server
from uploader.db.migrate import pending_revisions, upgrade_to_head


def _uploader(database_url: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "uploader", *args],
        env={**os.environ, "UPLOADER_DATABASE_URL": database_url, "UPLOADER_LOG_JSON": "true", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_migrations_started_together_take_turns() -> None:
    with empty_postgres_database() as url:
        runs = [_uploader(url, "migrate") for _ in range(4)]
        outcomes = [(run.wait(120), run.stderr.read() if run.stderr else "") for run in runs]
        assert [code for code, _ in outcomes] == [0, 0, 0, 0], outcomes
        assert pending_revisions(url) == []


def test_wait_applies_nothing_and_returns_once_another_process_migrated() -> None:
    with empty_postgres_database() as url:
        assert pending_revisions(url) != []
        timed_out = _uploader(url, "migrate", "--wait", "1")
        assert timed_out.wait(60) == 1
        assert "database.migration_pending" in (timed_out.stderr.read() if timed_out.stderr else "")
        assert pending_revisions(url) != [], "--wait applied migrations"

        waiting = _uploader(url, "migrate", "--wait", "60")
        time.sleep(2)
        assert waiting.poll() is None, "it returned before the database was migrated"
        upgrade_to_head(url)
        assert waiting.wait(30) == 0
        assert pending_revisions(url) == []


def test_serve_leaves_migrations_to_the_job_when_told(tmp_path: Path) -> None:
    with empty_postgres_database() as url:
        # Not migrated yet: it refuses to start, and says why, rather than failing later.
        refused = _uploader(
            url, "serve", "--port", str(free_port()), env={"UPLOADER_MIGRATE_ON_START": "false"}
        )
        assert refused.wait(60) == 1
        assert "database.migration_pending" in (refused.stderr.read() if refused.stderr else "")
        assert pending_revisions(url) != [], "serve migrated"

        upgrade_to_head(url)  # the job's work
        server = start_server(tmp_path, UPLOADER_DATABASE_URL=url, UPLOADER_MIGRATE_ON_START="false")
        try:
            assert httpx.get(f"{server.url}/readyz").status_code == 200
        finally:
            server.stop()
