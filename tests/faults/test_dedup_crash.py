"""kill -9 of the API while uploads link to one file's bytes and sharers are deleted:
no upload is left pointing at bytes that are gone, and no bytes are left that no upload
names."""

from __future__ import annotations

import base64
import hashlib
import os
import random
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.faults.invariant import assert_invariant
from tests.support import TUS, start_server, stored_objects
from uploader.settings import Settings

pytestmark = [pytest.mark.faults, pytest.mark.e2e]
LINKERS = 4


def test_kill_9_while_uploads_link_and_unlink_shared_bytes(tmp_path: Path) -> None:
    server = start_server(tmp_path / "server")
    settings = Settings(data_dir=tmp_path / "server")
    data = os.urandom(300_000)
    digest = f"sha-256=:{base64.b64encode(hashlib.sha256(data).digest()).decode()}:"
    declared = {**TUS, "Upload-Length": str(len(data)), "Repr-Digest": digest}
    rng = random.Random(5)
    try:
        first = httpx.post(
            server.tus_url,
            content=data,
            headers={**declared, "Content-Type": "application/offset+octet-stream"},
            timeout=30,
        )
        assert first.status_code == 201, first.text
        deadline = time.monotonic() + 30
        while httpx.get(f"{server.url}/api/v1/uploads").json()["items"][0]["state"] != "ready":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        stop = threading.Event()
        links = [0]

        def link_and_unlink(seed: int) -> None:
            mine = random.Random(seed)
            while not stop.is_set():
                try:
                    created = httpx.post(server.tus_url, headers=declared, timeout=5)
                    if created.status_code == 201:
                        assert created.headers["Upload-Offset"] in ("0", str(len(data)))
                        links[0] += created.headers["Upload-Offset"] == str(len(data))
                        if mine.random() < 0.6:  # delete some of them, the first one included
                            listed = httpx.get(f"{server.url}/api/v1/uploads?limit=20", timeout=5).json()
                            victim = mine.choice(listed["items"])["id"]
                            httpx.delete(f"{server.url}/api/v1/uploads/{victim}", timeout=5)
                except httpx.HTTPError:
                    time.sleep(0.05)  # the server died under us: it comes back

        workers = [threading.Thread(target=link_and_unlink, args=(i,)) for i in range(LINKERS)]
        for worker in workers:
            worker.start()
        try:
            for _ in range(5):
                time.sleep(rng.uniform(0.3, 1.0))
                server.kill()
                server.start()
            time.sleep(0.5)
        finally:
            stop.set()
            for worker in workers:
                worker.join(30)
        assert links[0] >= 10, "too few links were made to mean anything"
        # Every upload that holds bytes holds these, whole (no dangling reference), and
        # uploads a kill cut off before their creation answered hold nothing.
        rows = assert_invariant(settings, {}, server.url)
        live = [r for r in rows if not r.is_gone]
        for row in live:
            if row.state == "ready":
                content = httpx.get(f"{server.url}/api/v1/uploads/{row.id}/content", timeout=30).content
                assert content == data, row.id
            else:
                assert row.offset == 0, row
        # No bytes that no upload names (an orphan): the stored objects are those of rows.
        named = {row.storage_key for row in rows}
        for stored in stored_objects(settings):
            assert _storage_key(stored) in named, stored
        # And once every sharer is gone, so are the bytes.
        for row in live:
            httpx.delete(f"{server.url}/api/v1/uploads/{row.id}", timeout=10)
        sharing = {r.storage_key for r in rows if r.state == "ready"}
        assert not any(_storage_key(s) in sharing for s in stored_objects(settings))
    finally:
        server.stop()


def _storage_key(stored: str) -> str:
    """The storage key of a stored file (``ab/<key>``, ``ab/<key>.derived/<name>``)."""
    return stored.split("/")[1].split(".", 1)[0]
