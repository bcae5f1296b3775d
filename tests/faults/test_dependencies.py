"""The database and Redis going away and coming back: 503s with Retry-After, never a 500,
and no upload left looking done when it is not."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.faults.clients import MiB, TricklingPatch, create, head_offset, send_from
from tests.faults.conftest import PostgresDatabase, RedisServer
from tests.faults.invariant import assert_invariant
from tests.support import PATCH_HEADERS, TUS, LiveServer, start_server
from uploader.settings import Settings

pytestmark = [pytest.mark.faults, pytest.mark.e2e]


def _postgres_server(tmp_path: Path, database: PostgresDatabase, **env: str) -> tuple[LiveServer, Settings]:
    server = start_server(tmp_path / "server", UPLOADER_DATABASE_URL=database.url, **env)
    return server, Settings(data_dir=tmp_path / "server", database_url=database.url)


def _assert_unavailable(response: httpx.Response, dependency: str) -> None:
    assert response.status_code == 503, (response.status_code, response.text)
    assert "Retry-After" in response.headers
    if response.request.method != "HEAD":
        assert response.json()["code"] == "service.unavailable"
        assert response.json()["dependency"] == dependency


def test_a_database_blip_during_a_patch_never_leaves_a_full_upload_incomplete(
    tmp_path: Path, postgres_database: PostgresDatabase
) -> None:
    """Connections cut for a few seconds while 8 MiB stream at 1 MiB/s: the PATCH ends
    complete (its final record retried) or with a 503 and an offset below the length."""
    server, settings = _postgres_server(tmp_path, postgres_database)
    try:
        data = os.urandom(8 * MiB)
        url = create(server.tus_url, len(data))
        patch = TricklingPatch(url, data, rate=MiB)
        time.sleep(2.5)
        postgres_database.refuse_connections()
        time.sleep(4)
        postgres_database.allow_connections()
        status = patch.wait()
        assert patch.error is None, patch.error
        assert status in (204, 503), (status, server.log()[-3000:])
        status_doc = httpx.get(f"{server.url}/api/v1/uploads/{url.rsplit('/', 1)[1]}").json()
        offset = head_offset(url)
        if status == 204:
            assert int(patch.headers["upload-offset"]) == len(data)
            assert status_doc["state"] in ("received", "processing", "ready")
        else:
            assert offset < len(data)  # the client sends the rest again, which completes it
        if offset < len(data):
            response = send_from(url, data, offset)
            assert response.status_code == 204
        assert_invariant(settings, {url.rsplit("/", 1)[1]: [data]}, server.url)
        assert '"status": 500' not in server.log()
    finally:
        server.stop()


def test_pooled_connections_that_died_idle_cost_no_request(
    tmp_path: Path, postgres_database: PostgresDatabase
) -> None:
    """A failover that ends every backend while the pool holds idle connections: the next
    requests, many at once, all succeed (a unit of work on a dead connection is tried
    once more on a fresh one; nothing pings before each transaction)."""
    server, settings = _postgres_server(tmp_path, postgres_database)
    try:
        sent: dict[str, list[bytes]] = {}

        def upload(index: int) -> int:
            data = os.urandom(64 * 1024 + index)
            url = create(server.tus_url, len(data))
            sent[url.rsplit("/", 1)[1]] = [data]
            return send_from(url, data, 0).status_code

        with ThreadPoolExecutor(16) as pool:
            assert set(pool.map(upload, range(32))) == {204}  # the pool is full of connections
        postgres_database.refuse_connections()  # every backend ends...
        postgres_database.allow_connections()  # ...and the database is back at once
        with ThreadPoolExecutor(16) as pool:
            assert set(pool.map(upload, range(32, 64))) == {204}, server.log()[-3000:]
        assert_invariant(settings, sent, server.url)
    finally:
        server.stop()


def test_a_database_refusing_connections_gets_503_with_retry_after_and_readiness_says_so(
    tmp_path: Path, postgres_database: PostgresDatabase
) -> None:
    server, settings = _postgres_server(tmp_path, postgres_database)
    try:
        url = create(server.tus_url, 100)
        upload_id = url.rsplit("/", 1)[1]
        postgres_database.refuse_connections()
        _assert_unavailable(httpx.post(server.tus_url, headers={**TUS, "Upload-Length": "10"}), "database")
        _assert_unavailable(httpx.head(url, headers=TUS, timeout=30), "database")
        _assert_unavailable(
            httpx.patch(url, content=b"x" * 100, headers={**PATCH_HEADERS, "Upload-Offset": "0"}, timeout=30),
            "database",
        )
        _assert_unavailable(httpx.get(f"{server.url}/api/v1/uploads/{upload_id}"), "database")
        ready = httpx.get(f"{server.url}/readyz", timeout=30)
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"].startswith("error")
        postgres_database.allow_connections()
        # Back: the pool's dead connections are replaced, not handed to requests.
        for _ in range(5):
            assert httpx.head(url, headers=TUS, timeout=30).status_code == 200
        response = httpx.patch(url, content=b"x" * 100, headers={**PATCH_HEADERS, "Upload-Offset": "0"})
        assert response.status_code == 204
        assert_invariant(settings, {upload_id: [b"x" * 100]}, server.url)
        assert "request.failed" not in server.log()
    finally:
        server.stop()


def test_redis_down_gives_503_and_back_up_works_at_once(tmp_path: Path, own_redis: RedisServer) -> None:
    env = {"UPLOADER_REDIS_URL": own_redis.url, "UPLOADER_REDIS_PREFIX": "faults"}
    server = start_server(tmp_path / "server", **env)
    settings = Settings(data_dir=tmp_path / "server")
    try:
        url = create(server.tus_url, 2 * MiB)
        upload_id = url.rsplit("/", 1)[1]
        first = os.urandom(MiB)
        response = httpx.patch(url, content=first, headers={**PATCH_HEADERS, "Upload-Offset": "0"})
        assert response.status_code == 204
        own_redis.kill()
        # Writing needs the lock, which lives in Redis: a clear 503, not a 500 or a drop.
        rest = os.urandom(MiB)
        refused = httpx.patch(
            url, content=rest, headers={**PATCH_HEADERS, "Upload-Offset": str(MiB)}, timeout=30
        )
        _assert_unavailable(refused, "redis")
        ready = httpx.get(f"{server.url}/readyz", timeout=30)
        assert ready.status_code == 503
        assert ready.json()["checks"]["redis"].startswith("error")
        # Reading needs no Redis.
        assert head_offset(url) == MiB
        own_redis.start()
        # Pooled connections to the old server are found dead and replaced: no 500 after.
        response = httpx.patch(
            url, content=rest, headers={**PATCH_HEADERS, "Upload-Offset": str(MiB)}, timeout=30
        )
        assert response.status_code == 204, response.text
        assert httpx.get(f"{server.url}/readyz", timeout=30).status_code == 200
        assert_invariant(settings, {upload_id: [first + rest]}, server.url)
        assert "request.failed" not in server.log()
    finally:
        server.stop()


def test_a_form_and_a_creation_during_a_redis_outage_leave_no_phantom(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    """Events cannot be published: the recorded uploads stay whole and downloadable."""
    env = {
        "UPLOADER_REDIS_URL": own_redis.url,
        "UPLOADER_REDIS_PREFIX": "faults",
        "UPLOADER_PROCESSING": "off",
    }
    server = start_server(tmp_path / "server", **env)
    settings = Settings(data_dir=tmp_path / "server")
    try:
        own_redis.kill()
        form = httpx.post(f"{server.url}/api/v1/uploads", files={"file": ("a.txt", b"hello")}, timeout=30)
        created = httpx.post(server.tus_url, headers={**TUS, "Upload-Length": "5"}, timeout=30)
        assert form.status_code in (201, 503), form.text
        assert created.status_code in (201, 503), created.text
        sent: dict[str, list[bytes]] = {}
        if form.status_code == 201:
            form_id = form.json()["uploads"][0]["id"]
            sent[form_id] = [b"hello"]
            content = httpx.get(f"{server.url}/api/v1/uploads/{form_id}/content")
            assert content.status_code == 200
            assert content.content == b"hello"
        rows = assert_invariant(settings, sent, server.url)
        # Every recorded upload is one a client was told about.
        told = set(sent) | (
            {created.headers["Location"].rsplit("/", 1)[1]} if created.status_code == 201 else set()
        )
        assert {row.id for row in rows} == told
    finally:
        server.stop()


def test_redis_killed_during_a_patch_never_leaves_a_full_upload_incomplete(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    env = {"UPLOADER_REDIS_URL": own_redis.url, "UPLOADER_REDIS_PREFIX": "faults"}
    server = start_server(tmp_path / "server", **env)
    settings = Settings(data_dir=tmp_path / "server")
    try:
        data = os.urandom(8 * MiB)
        url = create(server.tus_url, len(data))
        patch = TricklingPatch(url, data, rate=MiB)
        time.sleep(2)
        own_redis.kill()
        time.sleep(3)
        own_redis.start()
        status = patch.wait()
        assert status in (204, 423, 503), (status, server.log()[-3000:])
        offset = head_offset(url)
        upload_id = url.rsplit("/", 1)[1]
        state = httpx.get(f"{server.url}/api/v1/uploads/{upload_id}").json()["state"]
        assert (offset == len(data)) == (state in ("received", "processing", "ready")), (offset, state)
        if offset < len(data):  # the lease ran out with Redis: the writer stopped and recorded
            response = send_from(url, data, offset)
            assert response.status_code == 204, response.text
        assert_invariant(settings, {upload_id: [data]}, server.url)
        assert "request.failed" not in server.log()
    finally:
        server.stop()


def test_rate_limits_with_redis_down_are_503_never_a_pass_or_a_500(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    env = {
        "UPLOADER_REDIS_URL": own_redis.url,
        "UPLOADER_REDIS_PREFIX": "faults-rate",
        "UPLOADER_RATE_LIMIT_IP": "1000/minute",
        "UPLOADER_RATE_LIMIT_CREATE": "100/minute",
    }
    server = start_server(tmp_path / "server", **env)
    settings = Settings(data_dir=tmp_path / "server")
    try:
        assert httpx.get(f"{server.url}/api/v1/uploads", timeout=30).status_code == 200
        own_redis.kill()
        # The counters live in Redis: a request cannot be counted, so it is not served.
        listed = httpx.get(f"{server.url}/api/v1/uploads", timeout=30)
        assert listed.status_code == 503, listed.text
        assert listed.headers["Retry-After"]
        created = httpx.post(server.tus_url, headers={**TUS, "Upload-Length": "10"}, timeout=30)
        assert created.status_code == 503, created.text
        # Probes are never limited: liveness answers, readiness says what is wrong.
        assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200
        assert httpx.get(f"{server.url}/readyz", timeout=30).status_code == 503
        own_redis.start()
        assert httpx.get(f"{server.url}/api/v1/uploads", timeout=30).status_code == 200
        url = create(server.tus_url, 5)
        data = b"hello"
        patched = httpx.patch(url, content=data, headers={**PATCH_HEADERS, "Upload-Offset": "0"}, timeout=30)
        assert patched.status_code == 204, patched.text
        assert_invariant(settings, {url.rsplit("/", 1)[1]: [data]}, server.url)
        assert "request.failed" not in server.log()
    finally:
        server.stop()
