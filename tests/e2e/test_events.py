"""Progress over Server-Sent Events, against a real server process."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.sse import SseEvent, create, events_of, read_events, send, watch_while_sending
from tests.support import LiveServer, redis_env, start_server

pytestmark = pytest.mark.e2e
KiB = 1024


@pytest.fixture(params=["in-process", "redis"])
def bus_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The embedded bus, or Redis Streams (the full stack)."""
    if request.param == "in-process":
        yield {}
        return
    yield from redis_env(request.getfixturevalue("redis_url"))


@pytest.fixture
def server(tmp_path: Path, bus_env: dict[str, str]) -> Iterator[LiveServer]:
    live = start_server(tmp_path / "server", UPLOADER_CHECKPOINT_BYTES=str(64 * KiB), **bus_env)
    try:
        yield live
    finally:
        live.stop()


def test_stream_follows_an_upload_to_ready_and_ends(server: LiveServer) -> None:
    url = create(server, 600 * KiB)
    seen = watch_while_sending(server, url, os.urandom(600 * KiB), chunk=200 * KiB)
    types = [e.type for e in seen]
    assert types[0] == "upload.created"
    states = [t for t in types if t.startswith("upload.") and t != "upload.progress"]
    assert states == ["upload.created", "upload.received", "upload.processing", "upload.ready"]
    steps = [(e.type, e.data.get("step")) for e in seen if e.type.startswith("processing.step_")]
    assert ("processing.step_done", "sniff") in steps
    assert ("processing.step_done", "sha256") in steps
    assert ("processing.step_done", "variants") not in steps  # not an image: no image step
    progress = [e.data["offset"] for e in seen if e.type == "upload.progress"]
    assert progress == sorted(progress)
    assert progress[-1] == 400 * KiB
    ids = [e.id for e in seen]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert seen[-1].data["sha256"] is not None


def test_late_client_gets_the_history_and_reconnects_with_last_event_id(server: LiveServer) -> None:
    url = create(server, 300 * KiB)
    upload_id = url.rsplit("/", 1)[-1]
    send(url, os.urandom(300 * KiB), chunk=100 * KiB)
    everything = events_of(server, upload_id)
    assert everything[0].type == "upload.created"
    assert everything[-1].type == "upload.ready"
    middle = everything[len(everything) // 2]
    missed = events_of(server, upload_id, **{"Last-Event-ID": str(middle.id)})
    assert [e.id for e in missed] == [e.id for e in everything if e.id is not None and e.id > middle.id]
    by_query = httpx.get(f"{server.url}/api/v1/uploads/{upload_id}/events?since={middle.id}", timeout=30)
    assert by_query.text.count("event: ") == len(missed)
    # Reconnecting after the last event: the stream says how the upload ended and closes.
    after_end: list[SseEvent] = []
    reader = threading.Thread(
        target=lambda: after_end.extend(
            events_of(server, upload_id, **{"Last-Event-ID": str(everything[-1].id)})
        )
    )
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "a stream reconnecting after the end never closed"
    assert [e.type for e in after_end] == ["upload.ready"]


def test_all_events_stream_covers_every_upload_and_keeps_alive(
    tmp_path: Path, bus_env: dict[str, str]
) -> None:
    live = start_server(tmp_path / "server", UPLOADER_SSE_KEEPALIVE_SECONDS="0.3", **bus_env)
    try:
        with httpx.stream("GET", f"{live.url}/api/v1/events", timeout=30) as response:
            stream = read_events(response)
            first, second = create(live, 10), create(live, 20)
            created = [next(e for e in stream if isinstance(e, SseEvent)) for _ in range(2)]
            assert [e.data["upload_id"] for e in created] == [u.rsplit("/", 1)[-1] for u in (first, second)]
            assert next(e for e in stream if isinstance(e, str)) == ": keep-alive"
    finally:
        live.stop()


def test_bad_last_event_id_and_unknown_uploads(server: LiveServer) -> None:
    url = create(server, 10)
    bad = httpx.get(f"{url.replace('/files/', '/api/v1/uploads/')}/events", headers={"Last-Event-ID": "x"})
    assert bad.status_code == 400
    unknown = httpx.get(f"{server.url}/api/v1/uploads/{'0' * 32}/events")
    assert unknown.status_code == 404


@pytest.mark.parametrize("bus_env", ["redis"], indirect=True)
def test_events_cross_api_processes_through_redis(tmp_path: Path, bus_env: dict[str, str]) -> None:
    """Two API processes on one database, storage and Redis: a client follows an upload on
    one while it is written through the other, and resumes its stream on either."""
    shared = {
        **bus_env,
        "UPLOADER_DATA_DIR": str(tmp_path / "shared"),
        "UPLOADER_CHECKPOINT_BYTES": str(64 * KiB),
    }
    writer = start_server(tmp_path / "writer", **shared)
    watcher = start_server(tmp_path / "watcher", **shared)
    try:
        url = create(writer, 300 * KiB)
        upload_id = url.rsplit("/", 1)[-1]
        seen = watch_while_sending(watcher, url, os.urandom(300 * KiB), chunk=100 * KiB)
        states = [e.type for e in seen if e.type in ("upload.received", "upload.processing", "upload.ready")]
        assert states == ["upload.received", "upload.processing", "upload.ready"]
        resumed = events_of(writer, upload_id, **{"Last-Event-ID": str(seen[1].id)})
        assert [e.id for e in resumed] == [e.id for e in seen[2:]]
    finally:
        writer.stop()
        watcher.stop()
