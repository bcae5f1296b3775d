"""The shipped proxy configurations, run with Debian's haproxy and nginx in front of two
API processes on PostgreSQL and Redis: no stickiness, nothing buffered, Location headers
right, event streams live, and a draining process out of the rotation before it stops."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import fresh_postgres_database
from tests.e2e.proxies import NGINX_CONF, Proxy, haproxy_in_front, nginx_in_front, wait_until_ready
from tests.e2e.slow_client import HandFedPatch
from tests.e2e.test_workers import redis_env_context
from tests.observability.metrics import scrape_url
from tests.support import PATCH_HEADERS, TUS, LiveServer, start_server, stop_process
from uploader.settings import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("proxies")]
MiB = 1024 * 1024


@dataclass
class Deployment:
    proxy: Proxy
    backends: list[LiveServer]
    settings: Settings


@pytest.fixture(scope="module", params=["haproxy", "nginx"])
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[Deployment]:
    tmp_path = tmp_path_factory.mktemp(request.param)
    with fresh_postgres_database() as database_url, redis_env_context(redis_url) as redis_settings:
        env = {
            **redis_settings,
            "UPLOADER_DATABASE_URL": database_url,
            "UPLOADER_TRUSTED_PROXIES": '["127.0.0.1"]',
            "UPLOADER_SHUTDOWN_DELAY_SECONDS": "6",
            # One store for both, as S3 would be (here a folder both processes write).
            "UPLOADER_STORAGE_URL": (tmp_path / "files").as_uri(),
        }
        backends = [start_server(tmp_path / f"api{i}", **env) for i in range(2)]
        root = tmp_path / "proxy"
        root.mkdir()
        proxy = (haproxy_in_front if request.param == "haproxy" else nginx_in_front)(root, backends)
        try:
            wait_until_ready(proxy)
            time.sleep(2.5)  # haproxy's first health checks (every 2 s)
            yield Deployment(proxy, backends, Settings(database_url=database_url, data_dir=tmp_path))
        finally:
            stop_process(proxy.process)  # type: ignore[arg-type]
            for backend in backends:
                backend.stop()


def _patches(backend: LiveServer) -> float:
    labels = {"method": "PATCH", "route": "/files/{upload_id}", "status": "204"}
    return scrape_url(backend.url).value("uploader_requests_total", **labels)


def test_uploads_go_through_to_every_process_with_locations_of_the_proxy(deployment: Deployment) -> None:
    proxy = deployment.proxy
    sent: dict[str, bytes] = {}
    for n in range(4):
        data = os.urandom(MiB + 1000 * n)
        created = httpx.post(proxy.tus_url, headers={**TUS, "Upload-Length": str(len(data))})
        assert created.status_code == 201, created.text
        location = created.headers["Location"]
        assert location.startswith(f"{proxy.url}/files/"), location  # the client's view, not a backend's
        for start in range(0, len(data), 256 * 1024):
            with httpx.Client() as client:  # each request a connection of its own
                answer = client.patch(
                    location,
                    content=data[start : start + 256 * 1024],
                    headers={
                        **PATCH_HEADERS,
                        "Upload-Offset": str(start),
                        "X-Request-ID": f"via-{n}-{start}",
                    },
                )
            assert answer.status_code == 204, answer.text
            assert answer.headers["x-request-id"] == f"via-{n}-{start}"  # passed through both ways
        sent[location] = data
    # No stickiness: both processes took PATCHes of these uploads.
    assert all(_patches(backend) > 0 for backend in deployment.backends)
    for location, data in sent.items():
        assert httpx.get(location, timeout=30).content == data


def test_bodies_are_not_buffered_by_the_proxy(deployment: Deployment) -> None:
    proxy = deployment.proxy
    data = os.urandom(6 * MiB)
    created = httpx.post(proxy.tus_url, headers={**TUS, "Upload-Length": str(len(data))})
    upload_id = created.headers["Location"].rsplit("/", 1)[1]
    status_url = f"{deployment.backends[0].url}/api/v1/uploads/{upload_id}"
    patch = HandFedPatch(created.headers["Location"], 0, len(data))
    try:
        # Five sixths of the body, and the rest held back until the API has recorded some
        # of it (the local store writes 2 MiB at a time and records what a finished write
        # stored once the next one starts: 2 MiB once 4 have come; read straight from a
        # process). A proxy that buffered bodies would not send a byte before the whole
        # body came, so nothing would ever be recorded.
        patch.send(data[: 5 * MiB])
        deadline = time.monotonic() + 30
        while (offset := httpx.get(status_url).json()["offset"]) < 2 * MiB:
            assert time.monotonic() < deadline, f"{offset} bytes recorded of a body held back"
            time.sleep(0.1)
        patch.send(data[5 * MiB :])
        assert patch.response().status == 204
    finally:
        patch.close()
    assert httpx.get(status_url).json()["offset"] == len(data)


def test_event_streams_come_through_live(deployment: Deployment) -> None:
    proxy = deployment.proxy
    created = httpx.post(proxy.tus_url, headers={**TUS, "Upload-Length": "5"})
    location = created.headers["Location"]
    upload_id = location.rsplit("/", 1)[1]
    seen: list[str] = []
    subscribed = threading.Event()

    def follow() -> None:
        with httpx.stream("GET", f"{proxy.url}/api/v1/uploads/{upload_id}/events", timeout=30) as stream:
            subscribed.set()
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    seen.append(line.removeprefix("event: "))
                if "upload.ready" in seen:
                    return

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    assert subscribed.wait(10)
    time.sleep(0.3)
    started = time.monotonic()
    assert (
        httpx.patch(location, content=b"hello", headers={**PATCH_HEADERS, "Upload-Offset": "0"}).status_code
        == 204
    )
    reader.join(10)
    assert "upload.ready" in seen, seen
    assert time.monotonic() - started < 5


def test_a_draining_process_leaves_the_rotation_before_it_stops(deployment: Deployment) -> None:
    proxy, (draining, staying) = deployment.proxy, deployment.backends
    assert draining.process is not None
    answers: list[int] = []
    stop = threading.Event()

    def keep_asking() -> None:
        while not stop.is_set():
            with httpx.Client() as client:
                try:
                    answers.append(client.get(f"{proxy.url}/api/v1/uploads", timeout=10).status_code)
                except httpx.HTTPError as exc:
                    answers.append(-1)
                    print(f"request failed: {exc}")
            time.sleep(0.02)

    asker = threading.Thread(target=keep_asking, daemon=True)
    asker.start()
    time.sleep(1)
    draining.process.send_signal(signal.SIGTERM)  # /readyz 503 now, stops 6 s later
    assert draining.process.wait(30) in (0, -signal.SIGTERM)
    time.sleep(1)
    stop.set()
    asker.join(15)
    assert len(answers) > 50
    assert set(answers) == {200}, json.dumps(answers)
    assert httpx.get(f"{proxy.url}/readyz").status_code == 200  # the other one
    assert staying.process is not None
    assert staying.process.poll() is None
    draining.start()  # back in the rotation for the tests after this one
    time.sleep(4.5)  # two health checks


def test_nginx_takes_the_bodies_the_api_takes() -> None:
    limit = re.search(r"(?m)^\s*client_max_body_size (\d+)g;", NGINX_CONF.read_text())
    assert limit is not None
    assert int(limit.group(1)) * 1024**3 == Settings.model_fields["max_upload_size"].default


def test_forwarded_scheme_is_believed_from_trusted_proxies_only(tmp_path: Path) -> None:
    trusting = start_server(tmp_path / "trusting", UPLOADER_TRUSTED_PROXIES='["127.0.0.1"]')
    wary = start_server(tmp_path / "wary")
    try:
        headers = {**TUS, "Upload-Length": "5", "X-Forwarded-Proto": "https"}
        believed = httpx.post(trusting.tus_url, headers=headers).headers["Location"]
        assert believed.startswith(f"https://127.0.0.1:{trusting.port}/files/")
        ignored = httpx.post(wary.tus_url, headers=headers).headers["Location"]
        assert ignored.startswith(f"http://127.0.0.1:{wary.port}/files/")
    finally:
        trusting.stop()
        wary.stop()
