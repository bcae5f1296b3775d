"""kill -9 of the API while the pre-finish hook decides: the upload is not received and
no client is told it is done; after the restart the client resumes, the hook is asked
again, and the upload ends ready with the bytes the client sent."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.faults.invariant import assert_invariant
from tests.hooks.conftest import HookReceiver, serving_hooks
from tests.support import PATCH_HEADERS, TUS, start_server
from uploader.settings import Settings

pytestmark = [pytest.mark.faults, pytest.mark.e2e]


def test_kill_9_while_pre_finish_decides_leaves_a_resumable_upload(tmp_path: Path) -> None:
    with serving_hooks() as hook:
        hook.answer("pre-finish", delay=3.0)
        crash_while_deciding(tmp_path, hook)


def crash_while_deciding(tmp_path: Path, hook: HookReceiver) -> None:
    data = os.urandom(3 * 1024 * 1024)
    server = start_server(
        tmp_path / "server",
        UPLOADER_HOOK_URL=hook.url,
        UPLOADER_HOOK_SECRET="hook-secret",
        UPLOADER_HOOK_TIMEOUT_SECONDS="10",
    )
    try:
        created = httpx.post(server.tus_url, headers={**TUS, "Upload-Length": str(len(data))})
        url = created.headers["Location"]
        half = len(data) // 2
        sent = httpx.patch(url, content=data[:half], headers={**PATCH_HEADERS, "Upload-Offset": "0"})
        assert sent.status_code == 204

        def last_patch() -> None:
            headers = {**PATCH_HEADERS, "Upload-Offset": str(half)}
            with contextlib.suppress(httpx.HTTPError):  # the server dies under it
                httpx.patch(url, content=data[half:], headers=headers, timeout=30)

        client = threading.Thread(target=last_patch)
        client.start()
        deadline = time.monotonic() + 10
        while "pre-finish" not in hook.events():
            assert time.monotonic() < deadline, "pre-finish was never asked"
            time.sleep(0.02)
        server.kill()  # the hook is still deciding
        client.join(10)
        upload_id = url.rsplit("/", 1)[1]
        settings = Settings(data_dir=tmp_path / "server")
        # Nothing says it is done: not the row, so not HEAD once the server is back.
        assert_invariant(settings, {upload_id: [data]})
        server.start()
        head = httpx.head(url, headers=TUS)
        offset = int(head.headers["Upload-Offset"])
        assert offset < len(data)
        status = httpx.get(f"{server.url}/api/v1/uploads/{upload_id}").json()
        assert status["state"] == "receiving"
        hook.answer("pre-finish")  # at once now
        resumed = httpx.patch(
            url, content=data[offset:], headers={**PATCH_HEADERS, "Upload-Offset": str(offset)}, timeout=30
        )
        assert resumed.status_code == 204, resumed.text
        assert resumed.headers["Upload-Offset"] == str(len(data))
        assert hook.events().count("pre-finish") == 2
        deadline = time.monotonic() + 30
        while (status := httpx.get(f"{server.url}/api/v1/uploads/{upload_id}").json())["state"] != "ready":
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
        assert status["sha256"] == hashlib.sha256(data).hexdigest()
        assert_invariant(settings, {upload_id: [data]}, server.url)
    finally:
        server.stop()
