"""Crash safety, lock interruption and graceful shutdown against a real server process."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.slow_client import HandFedPatch
from tests.support import PATCH_HEADERS, S3_TEST_BUCKET, TUS, LiveServer, redis_env, start_server

pytestmark = pytest.mark.e2e
MiB = 1024 * 1024


def create_upload(server: LiveServer, length: int) -> str:
    response = httpx.post(server.tus_url, headers={**TUS, "Upload-Length": str(length)})
    assert response.status_code == 201
    location: str = response.headers["Location"]
    return location


def server_offset(url: str) -> int:
    response = httpx.head(url, headers=TUS, timeout=30)
    assert response.status_code == 200, response.headers
    return int(response.headers["Upload-Offset"])


def finish_from(url: str, data: bytes, offset: int) -> None:
    response = httpx.patch(
        url, content=data[offset:], headers={**PATCH_HEADERS, "Upload-Offset": str(offset)}, timeout=60
    )
    assert response.status_code == 204, response.text
    assert int(response.headers["Upload-Offset"]) == len(data)


def downloaded_digest(server: LiveServer, url: str) -> str:
    digest = hashlib.sha256()
    with httpx.stream("GET", url, timeout=60) as response:
        assert response.status_code == 200
        for block in response.iter_bytes():
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture(params=["local", "s3"])
def storage_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """Server environment for local storage, or S3 on moto's server (5 MiB parts)."""
    if request.param == "local":
        return {}
    endpoint = request.getfixturevalue("s3_endpoint")
    return {
        "UPLOADER_STORAGE_URL": f"s3://{S3_TEST_BUCKET}/{secrets.token_hex(6)}",
        "UPLOADER_S3_ENDPOINT_URL": endpoint,
        "UPLOADER_S3_PART_SIZE": str(5 * MiB),
    }


def test_kill_9_mid_patch_loses_at_most_a_few_mib_and_resumes_byte_identical(
    tmp_path: Path, storage_env: dict[str, str]
) -> None:
    data = os.urandom(48 * MiB)
    server = start_server(tmp_path / "server", **storage_env)
    try:
        url = create_upload(server, len(data))
        feeder = HandFedPatch(url, 0, len(data))
        for start in range(0, 24 * MiB, MiB):
            feeder.send(data[start : start + MiB])
        # Wait until the server has seen the bytes: the offset advances during the PATCH.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status = httpx.get(f"{server.url}/api/v1/uploads/{url.rsplit('/', 1)[-1]}").json()
            if status["offset"] >= 16 * MiB:
                break
            time.sleep(0.05)
        else:
            stalled = f"the offset stayed at {status['offset']} during the PATCH"
            raise AssertionError(f"{stalled}:\n{server.log()[-3000:]}")
        server.kill()
        feeder.close()
        server.start()
        offset = server_offset(url)
        # Of 24 MiB received, what is lost is what was still being written: a few MiB.
        assert 16 * MiB <= offset <= 24 * MiB
        finish_from(url, data, offset)
        assert downloaded_digest(server, url) == hashlib.sha256(data).hexdigest(), f"resumed at {offset}"
    finally:
        server.stop()


def test_head_interrupts_a_stalled_patch_which_records_what_it_received(live_server: LiveServer) -> None:
    data = os.urandom(8 * MiB)
    url = create_upload(live_server, len(data))
    feeder = HandFedPatch(url, 0, len(data))
    feeder.send(data[: 3 * MiB])
    time.sleep(0.5)  # the client now stalls, as after a lost connection
    started = time.monotonic()
    offset = server_offset(url)
    assert time.monotonic() - started < 5
    assert offset == 3 * MiB
    response = feeder.response()
    assert response.status == 204
    assert response.getheader("Upload-Offset") == str(3 * MiB)
    feeder.close()
    finish_from(url, data, offset)
    assert downloaded_digest(live_server, url) == hashlib.sha256(data).hexdigest()


def test_two_writers_never_interleave(live_server: LiveServer) -> None:
    length = 6 * MiB
    url = create_upload(live_server, length)
    first = HandFedPatch(url, 0, length)
    first.send(b"A" * (2 * MiB))
    time.sleep(0.3)
    results: dict[str, int] = {}

    def second_writer() -> None:
        response = httpx.patch(
            url, content=b"B" * length, headers={**PATCH_HEADERS, "Upload-Offset": "0"}, timeout=30
        )
        results["second"] = response.status_code

    thread = threading.Thread(target=second_writer)
    thread.start()
    # The first writer keeps sending; it has been asked to stop and must not mix its bytes in.
    with contextlib.suppress(OSError):
        first.send(b"A" * MiB)
    first_response = first.response()
    thread.join(30)
    first.close()
    assert first_response.status == 204
    recorded = int(first_response.getheader("Upload-Offset") or -1)
    assert 2 * MiB <= recorded <= 3 * MiB
    assert results["second"] == 409  # its offset no longer matches: nothing of it was written
    assert server_offset(url) == recorded
    finish_from(url, b"A" * recorded + b"C" * (length - recorded), recorded)
    with httpx.stream("GET", url) as response:
        body = b"".join(response.iter_bytes())
    assert body == b"A" * recorded + b"C" * (length - recorded)


def test_sigterm_lets_an_inflight_patch_record_its_bytes(tmp_path: Path, storage_env: dict[str, str]) -> None:
    data = os.urandom(16 * MiB)
    server = start_server(tmp_path / "server", **storage_env)
    try:
        url = create_upload(server, len(data))
        feeder = HandFedPatch(url, 0, len(data))
        feeder.send(data[: 5 * MiB + 123])
        time.sleep(0.5)
        assert server.process is not None
        server.process.terminate()
        response = feeder.response()
        assert response.status == 204
        assert response.getheader("Upload-Offset") == str(5 * MiB + 123)
        feeder.close()
        # A clean exit: uvicorn re-raises the captured SIGTERM once it has shut down.
        assert server.process.wait(20) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in server.log()
        server.start()
        assert server_offset(url) == 5 * MiB + 123
        finish_from(url, data, 5 * MiB + 123)
        assert downloaded_digest(server, url) == hashlib.sha256(data).hexdigest()
    finally:
        server.stop()


@pytest.fixture
def redis_settings(redis_url: str) -> Iterator[dict[str, str]]:
    yield from redis_env(redis_url)


def test_a_request_on_another_api_process_interrupts_a_stalled_patch(
    tmp_path: Path, redis_settings: dict[str, str]
) -> None:
    """With Redis, locks span API processes: a HEAD on one makes a PATCH on the other let go."""
    shared = {**redis_settings, "UPLOADER_DATA_DIR": str(tmp_path / "shared")}
    first = start_server(tmp_path / "first", **shared)
    second = start_server(tmp_path / "second", **shared)
    try:
        data = os.urandom(8 * MiB)
        url = create_upload(first, len(data))
        feeder = HandFedPatch(url, 0, len(data))
        feeder.send(data[: 3 * MiB])
        time.sleep(0.5)  # the client stalls on the first process
        other_url = url.replace(first.url, second.url)
        started = time.monotonic()
        assert server_offset(other_url) == 3 * MiB
        assert time.monotonic() - started < 5
        response = feeder.response()
        assert response.status == 204
        assert response.getheader("Upload-Offset") == str(3 * MiB)
        feeder.close()
        finish_from(other_url, data, 3 * MiB)
        assert downloaded_digest(second, other_url) == hashlib.sha256(data).hexdigest()
    finally:
        first.stop()
        second.stop()
