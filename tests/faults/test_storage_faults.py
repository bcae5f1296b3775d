"""S3 that fails half-way: moto behind a small proxy that answers 503 or cuts the
connection in the middle of a part. The offset never passes what S3 holds, and every
upload ends with the client's bytes."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import http.server
import os
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.slow_client import HandFedPatch
from tests.faults.clients import MiB, send_from
from tests.faults.conftest import RedisServer
from tests.faults.invariant import assert_invariant
from tests.support import PATCH_HEADERS, S3_TEST_BUCKET, S3_TEST_ENV, TUS, LiveServer, start_server
from uploader.settings import Settings

pytestmark = [pytest.mark.faults, pytest.mark.e2e]
_HOP_BY_HOP = {"connection", "transfer-encoding", "keep-alive", "content-length"}
_SLOW_DOWN = b"<?xml version='1.0'?><Error><Code>SlowDown</Code><Message>injected</Message></Error>"


class FaultyProxy:
    """Relays S3 requests to moto; writes (parts and objects) fail as often as told."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.fail_rate = 0.0  # answered 503 SlowDown
        self.cut_rate = 0.0  # connection closed half-way through the body
        self.faults = 0
        self.rng = random.Random(7)
        # Writes whose body holds this marker are held back this long before they are
        # relayed (a part that is slow to land), and counted.
        self.slow_marker: bytes | None = None
        self.slow_seconds = 0.0
        self.slow_seen = 0
        # Called with each request's method and path before it is relayed; True drops it
        # unanswered (the moment a test kills the process that sent it).
        self.intercept: Callable[[str, str], bool] | None = None
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return None

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if proxy.intercept is not None and proxy.intercept(self.command, self.path):
                    self.close_connection = True
                    self.connection.close()
                    return
                if self.command == "PUT" and length:
                    roll = proxy.rng.random()
                    if roll < proxy.cut_rate:
                        proxy.faults += 1
                        self.rfile.read(length // 2)
                        self.close_connection = True
                        self.connection.close()
                        return
                    if roll < proxy.cut_rate + proxy.fail_rate:
                        proxy.faults += 1
                        self.rfile.read(length)
                        self.send_response(503)
                        self.send_header("Content-Type", "application/xml")
                        self.send_header("Content-Length", str(len(_SLOW_DOWN)))
                        self.end_headers()
                        self.wfile.write(_SLOW_DOWN)
                        return
                body = self.rfile.read(length) if length else None
                if body is not None and proxy.slow_marker is not None and proxy.slow_marker in body[:65536]:
                    proxy.slow_seen += 1
                    time.sleep(proxy.slow_seconds)
                upstream = http.client.HTTPConnection(
                    proxy.upstream.hostname, proxy.upstream.port, timeout=60
                )
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                    if body is not None:
                        headers["Content-Length"] = str(len(body))
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    payload = response.read()
                finally:
                    upstream.close()
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in _HOP_BY_HOP:
                        self.send_header(name, value)
                # A HEAD answer has no body but the length of the object it describes.
                length = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def faulty_s3(s3_endpoint: str) -> Iterator[FaultyProxy]:
    proxy = FaultyProxy(s3_endpoint)
    try:
        yield proxy
    finally:
        proxy.close()


def _send_until_done(url: str, data: bytes, chunk: int, deadline: float) -> list[int]:
    """A resuming client; returns every status it got."""
    statuses: list[int] = []
    while time.monotonic() < deadline:
        head = httpx.head(url, headers=TUS, timeout=60)
        offset = int(head.headers["Upload-Offset"])
        if offset == len(data):
            return statuses
        headers = {**PATCH_HEADERS, "Upload-Offset": str(offset)}
        response = httpx.patch(url, content=data[offset : offset + chunk], headers=headers, timeout=120)
        statuses.append(response.status_code)
        assert response.status_code in (204, 503), response.text
    raise AssertionError(f"not done: {statuses}")


def test_s3_failing_half_way_never_moves_the_offset_past_stored_bytes(
    tmp_path: Path, faulty_s3: FaultyProxy
) -> None:
    prefix = secrets.token_hex(6)
    server = start_server(
        tmp_path / "server",
        UPLOADER_STORAGE_URL=f"s3://{S3_TEST_BUCKET}/{prefix}",
        UPLOADER_S3_ENDPOINT_URL=faulty_s3.url,
        UPLOADER_S3_PART_SIZE=str(5 * MiB),
        UPLOADER_S3_MAX_ATTEMPTS="2",
        **S3_TEST_ENV,
    )
    settings = Settings(
        data_dir=tmp_path / "server",
        storage_url=f"s3://{S3_TEST_BUCKET}/{prefix}",
        s3_endpoint_url=faulty_s3.url,
    )
    for name, value in S3_TEST_ENV.items():
        os.environ.setdefault(name, value)
    try:
        files = [os.urandom(12 * MiB + 12345 * n) for n in range(3)]
        urls = []
        for data in files:
            created = httpx.post(server.tus_url, headers={**TUS, "Upload-Length": str(len(data))}, timeout=60)
            assert created.status_code == 201
            urls.append(created.headers["Location"])
        # An outage of every write: the PATCH is a 503 and records nothing it did not store.
        faulty_s3.fail_rate = 1.0
        refused = httpx.patch(
            urls[0], content=files[0][: 7 * MiB], headers={**PATCH_HEADERS, "Upload-Offset": "0"}, timeout=120
        )
        assert refused.status_code == 503
        assert httpx.head(urls[0], headers=TUS).headers["Upload-Offset"] == "0"
        # Writes that fail now and then, some cut off half-way: clients resume until done.
        faulty_s3.fail_rate, faulty_s3.cut_rate = 0.25, 0.1
        deadline = time.monotonic() + 180
        statuses = [
            s
            for url, data in zip(urls, files, strict=True)
            for s in _send_until_done(url, data, 3 * MiB, deadline)
        ]
        assert faulty_s3.faults > 3, statuses
        faulty_s3.fail_rate = faulty_s3.cut_rate = 0.0
        sent = {url.rsplit("/", 1)[1]: [data] for url, data in zip(urls, files, strict=True)}
        assert_invariant(settings, sent, server.url)
        for url, data in zip(urls, files, strict=True):
            status_url = f"{server.url}/api/v1/uploads/{url.rsplit('/', 1)[1]}"
            while (status := httpx.get(status_url).json())["state"] not in ("ready", "failed"):
                assert time.monotonic() < deadline, status
                time.sleep(0.1)
            assert status["state"] == "ready", status
            assert status["sha256"] == hashlib.sha256(data).hexdigest()
        assert "request.failed" not in server.log()
    finally:
        server.stop()


def test_a_stale_writers_slow_part_never_mixes_into_the_new_writers_upload(
    tmp_path: Path, faulty_s3: FaultyProxy, own_redis: RedisServer
) -> None:
    """The old writer's lease goes (Redis restarted without persistence) while one of its
    parts is still on the way to S3 and lands late. The new writer waits it out before it
    writes the same part numbers, so the object is the new writer's bytes alone."""
    first, second, settings = two_processes(
        tmp_path, faulty_s3, own_redis, UPLOADER_S3_PART_SIZE=str(5 * MiB)
    )
    try:
        length = 12 * MiB
        old, new = b"A" * length, b"B" * length
        url = create_on(first, length)
        other = second.url + url[url.index("/files/") :]
        faulty_s3.slow_marker, faulty_s3.slow_seconds = b"AAAAAAAAAAAAAAAA", 3.0
        feeder = HandFedPatch(url, 0, length)
        feeder.send(old[: 6 * MiB])
        deadline = time.monotonic() + 20
        while faulty_s3.slow_seen == 0:  # the old writer's first part is on its way
            assert time.monotonic() < deadline, "the old writer sent no part"
            time.sleep(0.02)
        own_redis.client().flushall()
        flushed = time.monotonic()
        offset = int(httpx.head(other, headers=TUS, timeout=30).headers["Upload-Offset"])
        headers = {**PATCH_HEADERS, "Upload-Offset": str(offset)}
        first_half = httpx.patch(other, content=new[offset : 6 * MiB], headers=headers, timeout=60)
        assert first_half.status_code == 204, first_half.text
        time.sleep(max(0.0, flushed + 4 - time.monotonic()))  # the old part has landed by now
        offset = int(httpx.head(other, headers=TUS, timeout=30).headers["Upload-Offset"])
        rest = send_from(other, new, offset)
        assert rest.status_code == 204, rest.text
        with contextlib.suppress(OSError):
            feeder.response()
        feeder.close()
        upload_id = url.rsplit("/", 1)[1]
        assert_invariant(settings, {upload_id: [new]}, second.url)
        body = httpx.get(f"{second.url}/api/v1/uploads/{upload_id}/content", timeout=60).content
        assert body == new, f"{body.count(b'A')} bytes of the old writer in the object"
    finally:
        first.stop()
        second.stop()


def two_processes(
    tmp_path: Path, faulty_s3: FaultyProxy, own_redis: RedisServer, **env: str
) -> tuple[LiveServer, LiveServer, Settings]:
    """Two API processes sharing a database, Redis and S3 behind the faulty proxy; and the
    settings that reach what they store."""
    prefix = secrets.token_hex(6)
    shared = {
        "UPLOADER_STORAGE_URL": f"s3://{S3_TEST_BUCKET}/{prefix}",
        "UPLOADER_S3_ENDPOINT_URL": faulty_s3.url,
        "UPLOADER_REDIS_URL": own_redis.url,
        "UPLOADER_REDIS_PREFIX": "faults",
        "UPLOADER_DATA_DIR": str(tmp_path / "shared"),
        "UPLOADER_PROCESSING": "off",
        **S3_TEST_ENV,
        **env,
    }
    first = start_server(tmp_path / "first", **shared)
    second = start_server(tmp_path / "second", **shared)
    for name, value in S3_TEST_ENV.items():
        os.environ.setdefault(name, value)
    settings = Settings(
        data_dir=tmp_path / "shared",
        storage_url=shared["UPLOADER_STORAGE_URL"],
        s3_endpoint_url=faulty_s3.url,
    )
    return first, second, settings


def create_on(server: LiveServer, length: int) -> str:
    created = httpx.post(server.tus_url, headers={**TUS, "Upload-Length": str(length)}, timeout=30)
    assert created.status_code == 201, created.text
    location: str = created.headers["Location"]
    return location


@pytest.mark.parametrize("killed", ["before-info-removed", "after-info-removed"])
def test_a_process_killed_after_completing_the_object_leaves_an_upload_others_finish(
    tmp_path: Path, faulty_s3: FaultyProxy, own_redis: RedisServer, killed: str
) -> None:
    """The process finishing an upload completes its S3 multipart upload and is killed
    (SIGKILL) before it records anything: before it removes the upload's bookkeeping
    object, or after. The client resumes on another process, which wrote the upload's
    earlier chunks and knows the multipart upload that is gone: its PATCH completes the
    upload, never a 503 for ever."""
    first, second, settings = two_processes(tmp_path, faulty_s3, own_redis, UPLOADER_S3_MAX_ATTEMPTS="2")
    try:
        data = os.urandom(MiB + 4321)
        chunk = 256 * 1024
        url = create_on(first, len(data))
        upload_path = url[url.index("/files/") :]
        on = [first, second]
        offset = 0
        while offset + chunk < len(data):  # every chunk but the last, on both processes in turn
            target = on[(offset // chunk) % 2].url + upload_path
            offset = int(send_from(target, data[: offset + chunk], offset).headers["Upload-Offset"])
        completed, killed_first = threading.Event(), threading.Event()

        def kill_first(method: str, path: str) -> bool:
            if method == "POST" and "uploadId=" in path:  # CompleteMultipartUpload goes through
                completed.set()
                return False
            info_removal = method == "DELETE" and path.split("?")[0].endswith(".info")
            if info_removal and killed == "after-info-removed":
                return False
            if completed.is_set():
                first.kill()
                faulty_s3.intercept = None
                killed_first.set()
                return True
            return False

        faulty_s3.intercept = kill_first
        with contextlib.suppress(httpx.HTTPError):
            send_from(first.url + upload_path, data, offset)
        assert killed_first.wait(15), "the first process was not killed after completing the object"
        resumed = second.url + upload_path
        deadline = time.monotonic() + 60
        while True:
            offset = int(httpx.head(resumed, headers=TUS, timeout=30).headers["Upload-Offset"])
            if offset == len(data):
                break
            answer = send_from(resumed, data, offset)
            if answer.status_code == 204:
                continue
            assert answer.status_code in (423, 503), answer.text  # the dead writer's lease
            assert time.monotonic() < deadline, f"no write succeeds: {answer.status_code} {answer.text}"
            time.sleep(0.5)
        upload_id = url.rsplit("/", 1)[1]
        assert_invariant(settings, {upload_id: [data]}, second.url)
        body = httpx.get(f"{second.url}/api/v1/uploads/{upload_id}/content", timeout=60).content
        assert body == data
    finally:
        first.stop()
        second.stop()
