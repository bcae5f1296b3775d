"""A client following a direct upload's events sees it received within seconds of S3
holding its object, though nothing tells the API the object arrived."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.sse import SseEvent, read_events
from tests.support import S3_TEST_BUCKET, S3_TEST_ENV, LiveServer, start_server

pytestmark = pytest.mark.e2e


@pytest.fixture
def server(tmp_path: Path, s3_endpoint: str) -> Iterator[LiveServer]:
    live = start_server(
        tmp_path / "server",
        **S3_TEST_ENV,
        UPLOADER_STORAGE_URL=f"s3://{S3_TEST_BUCKET}/events-{tmp_path.name[-8:]}",
        UPLOADER_S3_ENDPOINT_URL=s3_endpoint,
    )
    try:
        yield live
    finally:
        live.stop()


def test_a_single_request_upload_is_received_within_seconds_of_landing(server: LiveServer) -> None:
    form = httpx.get(f"{server.url}/s3/params", params={"filename": "note.txt", "type": "text/plain"}).json()
    seen: list[tuple[float, str]] = []
    opened = threading.Event()

    def follow() -> None:
        url = f"{server.url}/api/v1/uploads/{form['upload_id']}/events"
        with httpx.stream("GET", url, timeout=30) as response:
            opened.set()
            for event in read_events(response):
                if isinstance(event, SseEvent):
                    seen.append((time.monotonic(), event.type))
                    if event.type in ("upload.ready", "upload.failed"):
                        return

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    assert opened.wait(10)
    time.sleep(0.5)  # the stream is open and the object is not there yet
    stored = httpx.post(form["url"], data=form["fields"], files={"file": ("note.txt", b"hello, bucket")})
    landed = time.monotonic()
    assert stored.is_success, stored.text
    follower.join(20)
    types = [kind for _, kind in seen]
    assert "upload.received" in types, types
    assert types[-1] == "upload.ready", types
    received_at = next(at for at, kind in seen if kind == "upload.received")
    # The default schedule looks every 2 s: a few seconds at most.
    assert received_at - landed < 5, received_at - landed
