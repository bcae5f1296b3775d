"""Load test of the service: people uploading with tus in mixed sizes, some following the
live event stream, some downloading what was uploaded, some polling its status.

    locust -f tests/load/locustfile.py --headless -H http://127.0.0.1:8000 -u 40 -r 20 -t 60s

``tests/bench/bench_load.py`` runs it against one process and against two or three behind
HAProxy and prints the figures. Every request goes on a new connection when
``UPLOADER_LOAD_NEW_CONNECTIONS=1`` (so a proxy spreads one upload's requests), else on a
kept-alive one. ``UPLOADER_LOAD_TOKEN`` is sent as a bearer token when set. A follower
stays on the stream ``UPLOADER_LOAD_FOLLOW_SECONDS`` (10) at a time.

Besides each request, the statistics count two things of their own: ``UPLOAD whole
upload`` (creation to last byte acknowledged; its content size is the file's) and ``SSE
event`` (each event a follower received)."""

from __future__ import annotations

import os
import random
import time
from collections import deque
from typing import Any

from locust import FastHttpUser, HttpUser, constant, task

KiB = 1024
MiB = 1024 * KiB
# (size, weight): mostly small files, some large ones.
SIZES = [(64 * KiB, 50), (256 * KiB, 30), (1 * MiB, 15), (8 * MiB, 5)]
CHUNK = 4 * MiB  # the largest PATCH a client sends
TUS = {"Tus-Resumable": "1.0.0"}
FOLLOW_SECONDS = float(os.environ.get("UPLOADER_LOAD_FOLLOW_SECONDS", "10"))
_BLOB = random.Random(15).randbytes(max(size for size, _ in SIZES))
# Uploads whose bytes have all arrived, for the readers (this load process's own).
FINISHED: deque[str] = deque(maxlen=2000)


def _auth() -> dict[str, str]:
    token = os.environ.get("UPLOADER_LOAD_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _count(user: Any, kind: str, name: str, milliseconds: float, length: int) -> None:
    """A statistic of our own (a whole upload, an event received) beside the requests."""
    user.environment.events.request.fire(
        request_type=kind,
        name=name,
        response_time=milliseconds,
        response_length=length,
        exception=None,
        context={},
    )


def _failed(response: Any, expected: int) -> bool:
    """Counts a response that is not ``expected`` as a failure in the statistics."""
    if response.status_code == expected:
        return False
    response.failure(f"{response.status_code} {response.text[:200]}")
    return True


def _connection() -> dict[str, str]:
    return {"Connection": "close"} if os.environ.get("UPLOADER_LOAD_NEW_CONNECTIONS") == "1" else {}


class Uploader(FastHttpUser):
    """Creates an upload and sends it in PATCHes of at most 4 MiB, one after another."""

    weight = 6
    wait_time = constant(0)

    @task
    def upload(self) -> None:
        size = random.choices([s for s, _ in SIZES], [w for _, w in SIZES])[0]
        headers = {**TUS, **_auth(), **_connection()}
        started = time.perf_counter()
        with self.client.post(
            "/files/",
            headers={**headers, "Upload-Length": str(size)},
            name="tus create",
            catch_response=True,
        ) as created:
            if _failed(created, 201):
                return
            location = created.headers["Location"]
        path = location[location.index("/files/") :]
        offset = 0
        while offset < size:
            body = _BLOB[offset : min(size, offset + CHUNK)]
            patch_headers = {
                **headers,
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
            }
            with self.client.request(
                "PATCH", path, data=body, headers=patch_headers, name="tus patch", catch_response=True
            ) as sent:
                if _failed(sent, 204):
                    return
                offset = int(sent.headers["Upload-Offset"])
        FINISHED.append(path.rsplit("/", 1)[1])
        _count(self, "UPLOAD", "whole upload", (time.perf_counter() - started) * 1000, size)


class Follower(HttpUser):
    """Follows the event stream of every upload it may see, for a while at a time."""

    weight = 1
    wait_time = constant(0)

    @task
    def follow(self) -> None:
        deadline = time.monotonic() + FOLLOW_SECONDS
        with self.client.get(
            "/api/v1/events",
            headers={**_auth(), "Accept": "text/event-stream"},
            stream=True,
            # A quiet stream ends the follow by its read timeout, counted as a success.
            timeout=(5, FOLLOW_SECONDS),
            name="events stream",
            catch_response=True,
        ) as stream:
            if _failed(stream, 200):
                return
            try:
                for line in stream.iter_lines(chunk_size=None):
                    if line.startswith(b"event:"):
                        _count(self, "SSE", "event", 0, len(line))
                    if time.monotonic() > deadline:
                        break
            except Exception as exc:  # a stream dropped while followed counts against it
                if time.monotonic() <= deadline:
                    stream.failure(repr(exc))
                    return
            stream.success()


class Reader(FastHttpUser):
    """Polls the status of finished uploads, and sometimes downloads one."""

    weight = 3
    wait_time = constant(0.05)

    @task(3)
    def status(self) -> None:
        self._get_finished("/api/v1/uploads/{}", "status")

    @task(1)
    def download(self) -> None:
        self._get_finished("/api/v1/uploads/{}/content", "download")

    def _get_finished(self, path: str, name: str) -> None:
        """GET ``path`` of an upload finished here, once there is one."""
        if not FINISHED:
            time.sleep(0.2)
            return
        with self.client.get(
            path.format(random.choice(FINISHED)),
            headers={**_auth(), **_connection()},
            name=name,
            catch_response=True,
        ) as got:
            _failed(got, 200)
