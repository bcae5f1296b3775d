"""The Locust load test (tests/load/locustfile.py) runs against a live server: a few seconds
of every kind of user, with uploads finished, statuses and downloads read, events
followed, and not one failure."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO, LiveServer, start_server

pytestmark = [pytest.mark.e2e]


@pytest.fixture
def server(tmp_path: Path) -> LiveServer:
    live = start_server(tmp_path / "server")
    yield live  # type: ignore[misc]
    live.stop()


def test_every_kind_of_user_gets_through(server: LiveServer, tmp_path: Path) -> None:
    prefix = tmp_path / "load"
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "locust"),
            "-f",
            str(REPO / "tests" / "load" / "locustfile.py"),
            "--headless",
            "--only-summary",
            "-H",
            server.url,
            "-u",
            "10",
            "-r",
            "10",
            "-t",
            "5s",
            "--stop-timeout",
            "15",
            "--csv",
            str(prefix),
        ],
        env={**os.environ, "UPLOADER_LOAD_FOLLOW_SECONDS": "2"},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with open(f"{prefix}_stats.csv", newline="") as stats:
        rows = {row["Name"]: row for row in csv.DictReader(stats)}
    assert rows["Aggregated"]["Failure Count"] == "0", done.stderr[-3000:]
    for name in ("whole upload", "tus create", "tus patch", "status", "download", "events stream", "event"):
        assert int(rows[name]["Request Count"]) > 0, name
    # Every finished upload's bytes count towards the figures, and sizes are mixed.
    assert float(rows["whole upload"]["Average Content Size"]) > 64 * 1024
