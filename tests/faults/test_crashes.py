"""kill -9 of the API at random moments while many uploads are under way: every one
resumes and ends byte-identical."""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.faults.clients import MiB
from tests.faults.invariant import assert_invariant
from tests.support import PATCH_HEADERS, TUS, LiveServer, start_server
from uploader.settings import Settings

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.long]
UPLOADS = 50
CHUNK = 256 * 1024
PACE = 0.05  # seconds between a client's requests: the run lasts long enough for several kills


class ResumingClient:
    """Uploads one file as a tus client does: on any failure, HEAD and go on from there."""

    def __init__(self, server: LiveServer, data: bytes) -> None:
        self.server = server
        self.data = data
        self.url: str | None = None

    def _try(self) -> bool:
        with httpx.Client(timeout=10) as client:
            if self.url is None:
                created = client.post(
                    self.server.tus_url, headers={**TUS, "Upload-Length": str(len(self.data))}
                )
                if created.status_code != 201:
                    return False
                self.url = created.headers["Location"]
            head = client.head(self.url, headers=TUS)
            if head.status_code != 200:
                return False
            offset = int(head.headers["Upload-Offset"])
            while offset < len(self.data):
                headers = {**PATCH_HEADERS, "Upload-Offset": str(offset)}
                response = client.patch(self.url, content=self.data[offset : offset + CHUNK], headers=headers)
                if response.status_code != 204:
                    return False
                offset = int(response.headers["Upload-Offset"])
                time.sleep(PACE)
            return True

    def run(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                if self._try():
                    return
            except httpx.HTTPError:
                pass  # the server died under us: it comes back
            time.sleep(0.1)
        raise AssertionError(f"{self.url} did not finish")


def test_kill_9_at_random_moments_of_50_uploads(tmp_path: Path) -> None:
    server = start_server(tmp_path / "server")
    settings = Settings(data_dir=tmp_path / "server")
    rng = random.Random(11)
    files = [os.urandom(rng.randrange(64 * 1024, 3 * MiB)) for _ in range(UPLOADS)]
    clients = [ResumingClient(server, data) for data in files]
    deadline = time.monotonic() + 240
    done = threading.Event()
    kills = 0

    def upload_some(mine: list[ResumingClient]) -> None:
        for client in mine:
            client.run(deadline)

    workers = [threading.Thread(target=upload_some, args=(clients[i::6],)) for i in range(6)]
    for worker in workers:
        worker.start()
    try:
        while any(worker.is_alive() for worker in workers) and kills < 8:
            time.sleep(rng.uniform(0.3, 1.5))
            server.kill()
            kills += 1
            server.start()
        for worker in workers:
            worker.join(max(1.0, deadline - time.monotonic()))
        done.set()
        assert kills >= 3, "the uploads finished before the server was killed often enough"
        assert not any(worker.is_alive() for worker in workers)
        sent = {}
        for client, data in zip(clients, files, strict=True):
            assert client.url is not None
            upload_id = client.url.rsplit("/", 1)[1]
            sent[upload_id] = [data]
            status = _settled(server, upload_id)
            assert status["state"] == "ready", status
            assert status["sha256"] == hashlib.sha256(data).hexdigest()
        rows = assert_invariant(settings, sent, server.url)
        # Creations a kill cut off before the client heard back are rows no client knows:
        # they hold nothing, and the invariant checked them all the same.
        for row in rows:
            if row.id not in sent:
                assert row.offset == 0
    finally:
        server.stop()


def _settled(server: LiveServer, upload_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 30
    while True:
        status: dict[str, object] = httpx.get(f"{server.url}/api/v1/uploads/{upload_id}", timeout=10).json()
        if status["state"] in ("ready", "failed") or time.monotonic() > deadline:
            return status
        time.sleep(0.1)
