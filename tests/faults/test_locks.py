"""Writers on two API processes sharing Redis: lost leases, stalled and dead holders, races."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.slow_client import HandFedPatch
from tests.faults.clients import MiB, create, head_offset, send_from
from tests.faults.conftest import RedisServer
from tests.faults.invariant import assert_invariant
from tests.support import TUS, LiveServer, start_server
from uploader.settings import Settings

pytestmark = [pytest.mark.faults, pytest.mark.e2e]
PREFIX = "faults"


@pytest.fixture
def two_servers(tmp_path: Path, own_redis: RedisServer) -> Iterator[tuple[LiveServer, LiveServer, Settings]]:
    shared = {
        "UPLOADER_REDIS_URL": own_redis.url,
        "UPLOADER_REDIS_PREFIX": PREFIX,
        "UPLOADER_DATA_DIR": str(tmp_path / "shared"),
        "UPLOADER_PROCESSING": "off",
    }
    first = start_server(tmp_path / "first", **shared)
    second = start_server(tmp_path / "second", **shared)
    try:
        yield first, second, Settings(data_dir=tmp_path / "shared")
    finally:
        first.stop()
        second.stop()


def _on(server: LiveServer, url: str) -> str:
    return server.url + url[url.index("/files/") :]


def _finish(url: str, data: bytes, attempts: int = 10) -> httpx.Response:
    """A client that resumes as tus clients do: HEAD, PATCH, again on 409 or 423."""
    for _ in range(attempts):
        response = send_from(url, data, head_offset(url))
        if response.status_code not in (409, 423):
            return response
        time.sleep(0.2)
    raise AssertionError(f"never finished: {response.status_code} {response.text}")


def test_a_writer_that_lost_its_lease_stops_and_the_file_is_the_new_writers(
    two_servers: tuple[LiveServer, LiveServer, Settings], own_redis: RedisServer
) -> None:
    first, second, settings = two_servers
    length = 12 * MiB
    old = os.urandom(length)
    url = create(first.tus_url, length)
    upload_id = url.rsplit("/", 1)[1]
    feeder = HandFedPatch(url, 0, length)
    feeder.send(old[: 8 * MiB])  # about 4 MiB of it wait in socket buffers
    deadline = time.monotonic() + 10
    status_url = f"{second.url}/api/v1/uploads/{upload_id}"  # reading the status interrupts nobody
    while httpx.get(status_url).json()["offset"] < MiB:
        assert time.monotonic() < deadline, "no checkpoint was recorded"
        time.sleep(0.05)
    own_redis.client().flushall()  # as a Redis restart without persistence would
    # Another client resumes through the other process while the first one keeps sending.
    new = old[: 8 * MiB] + os.urandom(length - 8 * MiB)
    result: dict[str, httpx.Response] = {}
    thread = threading.Thread(target=lambda: result.setdefault("new", _finish(_on(second, url), new)))
    thread.start()
    try:
        for start in range(8 * MiB, length, 128 * 1024):  # slower than the newcomer
            feeder.send(old[start : start + 128 * 1024])
            time.sleep(0.05)
        old_status = feeder.response().status
    except OSError:
        old_status = None  # the server stopped reading and closed
    finally:
        feeder.close()
    thread.join(60)
    assert result["new"].status_code == 204, result["new"].text
    # The old writer was stopped: it is not told its bytes were stored, and they were not.
    assert old_status != 204
    rows = assert_invariant(settings, {upload_id: [new]}, second.url)
    assert rows[0].offset == length
    body = httpx.get(f"{second.url}/api/v1/uploads/{upload_id}/content", timeout=30).content
    assert body == new


def test_a_patch_waiting_for_another_process_is_never_interrupted_by_its_own_release_request(
    two_servers: tuple[LiveServer, LiveServer, Settings],
) -> None:
    first, second, settings = two_servers
    length = 4 * MiB
    data = os.urandom(length)
    url = create(first.tus_url, length)
    feeder = HandFedPatch(url, 0, length)
    time.sleep(0.5)  # the first writer hangs before its first byte, holding the lease
    # The newcomer waits for the old writer to stop and record, then writes all of its body.
    late = send_from(_on(second, url), data, 0)
    assert late.status_code == 204, (late.status_code, late.text)
    assert late.headers["Upload-Offset"] == str(length)
    assert feeder.response().status == 204
    feeder.close()
    assert_invariant(settings, {url.rsplit("/", 1)[1]: [data]}, second.url)


def test_racing_writers_on_two_processes_store_one_clients_bytes(
    two_servers: tuple[LiveServer, LiveServer, Settings],
) -> None:
    first, second, settings = two_servers
    sent: dict[str, list[bytes]] = {}
    for _ in range(5):
        length = 3 * MiB
        contents = [os.urandom(length), os.urandom(length)]
        url = create(first.tus_url, length)
        sent[url.rsplit("/", 1)[1]] = contents
        answers: list[httpx.Response] = []

        def send(
            server: LiveServer, content: bytes, url: str = url, answers: list[httpx.Response] = answers
        ) -> None:
            answers.append(send_from(_on(server, url), content, 0))

        threads = [
            threading.Thread(target=send, args=(server, content))
            for server, content in zip((first, second), contents, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert all(a.status_code in (204, 409, 423) for a in answers), [a.text for a in answers]
        recorded = head_offset(_on(second, url))
        # One of them wrote (a writer interrupted before its first byte answers 204 at 0,
        # and the other then writes from there); the offset is the furthest one told.
        assert recorded > 0, [(a.status_code, a.headers.get("Upload-Offset")) for a in answers]
        assert recorded == max(int(a.headers.get("Upload-Offset", 0)) for a in answers)
    assert_invariant(settings, sent, second.url)


def test_after_kill_9_of_a_process_its_uploads_resume_elsewhere_within_seconds(
    two_servers: tuple[LiveServer, LiveServer, Settings],
) -> None:
    first, second, settings = two_servers
    length = 6 * MiB
    data = os.urandom(length)
    url = create(first.tus_url, length)
    feeder = HandFedPatch(url, 0, length)
    feeder.send(data[: 3 * MiB])
    time.sleep(0.5)
    first.kill()
    feeder.close()
    started = time.monotonic()
    offset = head_offset(_on(second, url))  # HEAD needs no lock: no 423, no wait for the lease
    assert time.monotonic() - started < 3
    response = send_from(_on(second, url), data, offset)
    assert response.status_code == 204, response.text
    assert time.monotonic() - started < 9  # within the 5 s lease, not half a minute
    assert_invariant(settings, {url.rsplit("/", 1)[1]: [data]}, second.url)
    assert httpx.head(_on(second, url), headers=TUS).headers["Upload-Offset"] == str(length)
