"""``uploader serve --workers N``: several processes on one port, on PostgreSQL and Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import fresh_postgres_database
from tests.e2e.test_workers import redis_env_context
from tests.faults.invariant import assert_invariant
from tests.observability.metrics import Scrape
from tests.support import PATCH_HEADERS, TUS, LiveServer, free_port, stop_process, uploader_command
from uploader.settings import Settings

pytestmark = pytest.mark.e2e
MiB = 1024 * 1024


def test_several_processes_on_sqlite_are_refused_with_the_reason(tmp_path: Path) -> None:
    env = {**os.environ, "UPLOADER_DATA_DIR": str(tmp_path)}
    env.pop("UPLOADER_DATABASE_URL", None)
    env.pop("UPLOADER_REDIS_URL", None)
    refused = subprocess.run(
        [*uploader_command(), "serve", "--workers", "3", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "--workers 3 needs PostgreSQL" in refused.stderr
    assert "Redis" in refused.stderr


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.fixture
def three_processes(tmp_path: Path, redis_url: str) -> Iterator[tuple[LiveServer, Settings]]:
    with fresh_postgres_database() as database_url, redis_env_context(redis_url) as redis_settings:
        env = {
            **os.environ,
            **redis_settings,
            "UPLOADER_DATA_DIR": str(tmp_path / "data"),
            "UPLOADER_DATABASE_URL": database_url,
            "UPLOADER_WORKERS": "3",
        }
        server = LiveServer(data_dir=tmp_path / "data", port=free_port(), env=env)
        server.start()
        settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
        try:
            yield server, settings
        finally:
            stop_process(server.process)


def _upload_on_new_connections(server: LiveServer, data: bytes, chunk: int) -> str:
    """A tus upload whose every request is a connection of its own: the kernel hands
    them to any of the processes."""
    created = httpx.post(server.tus_url, headers={**TUS, "Upload-Length": str(len(data))})
    assert created.status_code == 201, created.text
    url: str = created.headers["Location"]
    for start in range(0, len(data), chunk):
        with httpx.Client() as client:
            sent = client.patch(
                url,
                content=data[start : start + chunk],
                headers={**PATCH_HEADERS, "Upload-Offset": str(start)},
            )
        assert sent.status_code == 204, sent.text
    return url


def test_three_processes_share_the_port_replace_a_killed_one_and_stop_together(
    three_processes: tuple[LiveServer, Settings],
) -> None:
    server, settings = three_processes
    assert server.process is not None
    children = _children(server.process.pid)
    assert len(children) == 3
    sent = {}
    for n in range(6):
        data = os.urandom(MiB + n)  # four chunks, or five
        url = _upload_on_new_connections(server, data, 256 * 1024)
        sent[url.rsplit("/", 1)[1]] = [data]
    # Every process's requests are in any process's /metrics.
    scraped = [Scrape(httpx.get(f"{server.url}/metrics").text) for _ in range(6)]
    labels = {"method": "PATCH", "route": "/files/{upload_id}", "status": "204"}
    assert {scrape.value("uploader_requests_total", **labels) for scrape in scraped} == {4 + 5 * 5}
    # One dies: it is replaced, and the others serve on meanwhile.
    os.kill(children[1], signal.SIGKILL)
    deadline = time.monotonic() + 15
    while len(now := _children(server.process.pid)) < 3 or children[1] in now:
        assert time.monotonic() < deadline, now
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        time.sleep(0.1)
    assert "killed by SIGKILL" in server.log()
    data = os.urandom(MiB)
    url = _upload_on_new_connections(server, data, 128 * 1024)
    sent[url.rsplit("/", 1)[1]] = [data]
    for upload_id in sent:
        status = httpx.get(f"{server.url}/api/v1/uploads/{upload_id}").json()
        assert status["state"] in ("received", "processing", "ready"), status
    # SIGTERM: every process drains and the command ends.
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(40) == 0
    assert "server.stopped" in server.log()
    assert_invariant(settings, sent)
