"""Following Server-Sent Events from a real server, and tus steps for the event tests."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

from tests.support import PATCH_HEADERS, TUS, LiveServer


@dataclass
class SseEvent:
    id: int | None
    type: str
    data: dict[str, object]


def read_events(response: httpx.Response) -> Iterator[SseEvent | str]:
    """Events as they arrive; comment lines (keep-alives) come through as strings."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line.startswith(":"):
            yield line
        elif line == "":
            if "event" in fields:
                yield SseEvent(
                    id=int(fields["id"]) if "id" in fields else None,
                    type=fields["event"],
                    data=json.loads(fields.get("data", "{}")),
                )
            fields = {}
        else:
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


def create(server: LiveServer, length: int) -> str:
    response = httpx.post(server.tus_url, headers={**TUS, "Upload-Length": str(length)})
    assert response.status_code == 201
    location: str = response.headers["Location"]
    return location


def send(url: str, data: bytes, chunk: int) -> None:
    for start in range(0, len(data), chunk):
        response = httpx.patch(
            url, content=data[start : start + chunk], headers={**PATCH_HEADERS, "Upload-Offset": str(start)}
        )
        assert response.status_code == 204


def events_of(server: LiveServer, upload_id: str, **headers: str) -> list[SseEvent]:
    with httpx.stream(
        "GET", f"{server.url}/api/v1/uploads/{upload_id}/events", headers=headers, timeout=30
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [e for e in read_events(response) if isinstance(e, SseEvent)]


def watch_while_sending(watcher: LiveServer, url: str, data: bytes, chunk: int) -> list[SseEvent]:
    """Follow the upload's event stream on ``watcher`` while its bytes go to ``url``."""
    upload_id = url.rsplit("/", 1)[-1]
    seen: list[SseEvent] = []
    subscribed = threading.Event()

    def follow() -> None:
        with httpx.stream("GET", f"{watcher.url}/api/v1/uploads/{upload_id}/events", timeout=30) as r:
            subscribed.set()
            seen.extend(e for e in read_events(r) if isinstance(e, SseEvent))

    follower = threading.Thread(target=follow)
    follower.start()
    assert subscribed.wait(10)
    send(url, data, chunk)
    follower.join(30)
    assert not follower.is_alive(), "the stream did not end after the upload was ready"
    return seen
