"""Scale out for real: three API processes behind the shipped HAProxy configuration (no
sticky sessions), on PostgreSQL, Redis, S3 on moto's server and a Celery worker.

Uploads of 1 to 3 MiB, 45 of them, 20 at a time (UPLOADER_SCALE_OUT_FULL=1: 200 of 1 to
8 MiB, 40 at a time), every request on a connection of its own so that one upload's
requests land on every process: tus, the IETF draft and tus-js-client's parallel uploads.
Part-way, one API process is killed with SIGKILL and started again; clients resume
through the proxy. Every upload ends ready and whole, no 5xx comes but
from the killed process's moment, and an event stream on one process sees every upload
written through the others, in order, across a reconnection to another process with
``Last-Event-ID``. Two writers of one upload on two processes never interleave."""

from __future__ import annotations

import hashlib
import os
import random
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import fresh_postgres_database
from tests.e2e.proxies import Proxy, haproxy_in_front, wait_until_ready
from tests.e2e.test_workers import redis_env_context
from tests.faults.invariant import assert_invariant
from tests.sse import SseEvent, read_events
from tests.support import (
    REPO,
    S3_TEST_ENV,
    TUS,
    LiveServer,
    WorkerProcess,
    s3_celery_env,
    spawn_uploader,
    start_moto_server,
    start_server,
    stop_process,
)
from uploader.settings import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.faults, pytest.mark.xdist_group("scale-out")]
MiB = 1024 * 1024
CHUNK = 256 * 1024
# moto's server takes each 256 KiB chunk as several S3 calls: the CI run is about a minute
# here, the full one (UPLOADER_SCALE_OUT_FULL=1) a quarter of an hour.
FULL = os.environ.get("UPLOADER_SCALE_OUT_FULL") == "1"
UPLOADS, AT_ONCE, LARGEST = (200, 40, 8 * MiB) if FULL else (45, 20, 3 * MiB)
OFFSET_STREAM = "application/offset+octet-stream"
# No upload takes this long, even through the kill: one that does is locked out.
UPLOAD_DEADLINE = 240 if FULL else 120


@dataclass
class Cluster:
    apis: list[LiveServer]
    worker: WorkerProcess
    proxy: Proxy
    settings: Settings


@pytest.fixture(scope="module")
def own_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto server of the cluster's own: the session's holds what every earlier test
    stored, which the cluster's orphan sweep would list beside the uploads under test
    (moto's server answered some of those uploads' parts 500 when it did)."""
    for name, value in S3_TEST_ENV.items():
        os.environ.setdefault(name, value)  # for the checks this process makes
    server = start_moto_server(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, own_s3: str, redis_url: str) -> Iterator[Cluster]:
    s3_endpoint = own_s3
    root = tmp_path_factory.mktemp("scale-out")
    prefix = secrets.token_hex(6)
    with fresh_postgres_database() as database_url, redis_env_context(redis_url) as redis_settings:
        env = {
            **s3_celery_env(database_url, redis_settings, s3_endpoint, prefix),
            "UPLOADER_TRUSTED_PROXIES": '["127.0.0.1"]',
            "UPLOADER_CLEANUP_INTERVAL_SECONDS": "5",
        }
        apis = [start_server(root / f"api{i}", **env) for i in range(3)]
        worker = WorkerProcess(root / "worker.log", {**os.environ, **apis[0].env})
        # Beat, as a deployment runs it: an upload the killed process recorded as received
        # but never sent to the workers is sent again a minute later.
        beat_env = {**os.environ, **apis[0].env, "UPLOADER_DATA_DIR": str(root / "beat")}
        beat = spawn_uploader(["beat"], beat_env, root / "beat.log")
        proxy_root = root / "proxy"
        proxy_root.mkdir()
        proxy = haproxy_in_front(proxy_root, apis)
        try:
            worker.start(2)
            wait_until_ready(proxy)
            time.sleep(2.5)  # haproxy's first health checks
            settings = Settings(
                data_dir=root,
                database_url=database_url,
                storage_url=env["UPLOADER_STORAGE_URL"],
                s3_endpoint_url=s3_endpoint,
            )
            yield Cluster(apis, worker, proxy, settings)
        finally:
            stop_process(proxy.process)
            stop_process(beat)
            worker.stop()
            for api in apis:
                api.stop()


@dataclass(frozen=True)
class Failure:
    at: float
    method: str
    url: str
    detail: str


@dataclass
class Client:
    """Requests through the proxy, each on a new connection; what went wrong, and when."""

    url: str
    failures: list[Failure] = field(default_factory=list)
    answers: list[tuple[float, str]] = field(default_factory=list)  # every 4xx and 5xx
    lock: threading.Lock = field(default_factory=threading.Lock)

    def request(self, method: str, url: str, **kwargs: object) -> httpx.Response | None:
        try:
            answer = httpx.request(method, url, timeout=60, **kwargs)  # type: ignore[arg-type]
        except httpx.TransportError as exc:
            self._failed(method, url, type(exc).__name__)
            return None
        if answer.status_code >= 500:
            # Also the proxy's own 502 for a request its process died under.
            self._failed(method, url, f"{answer.status_code} {answer.text[:200]}")
        if answer.status_code >= 400:
            with self.lock:
                self.answers.append((time.monotonic(), f"{method} {url} {answer.status_code}"))
        return answer

    def last_answers(self, location: str) -> list[str]:
        with self.lock:
            return [what for _, what in self.answers if location in what][-5:]

    def _failed(self, method: str, url: str, detail: str) -> None:
        with self.lock:
            self.failures.append(Failure(time.monotonic(), method, url, detail))

    def until(self, attempt: Callable[[], httpx.Response | None], ok: tuple[int, ...]) -> httpx.Response:
        """``attempt`` again (a process died under it) until it answers one of ``ok``."""
        deadline = time.monotonic() + 60
        while True:
            answer = attempt()
            if answer is not None and answer.status_code in ok:
                return answer
            assert answer is None or answer.status_code >= 500, (answer.status_code, answer.text)
            assert time.monotonic() < deadline, "no answer for a minute"
            time.sleep(0.2)

    def tus(self, data: bytes) -> str:
        created = self.until(
            lambda: self.request(
                "POST", f"{self.url}/files/", headers={**TUS, "Upload-Length": str(len(data))}
            ),
            (201,),
        )
        location = created.headers["Location"]

        def at(offset: int) -> dict[str, str]:
            return {**TUS, "Content-Type": OFFSET_STREAM, "Upload-Offset": str(offset)}

        self._send(location, data, at, TUS, 200)
        return location.rsplit("/", 1)[1]

    def draft(self, data: bytes) -> str:
        version = {"Upload-Draft-Interop-Version": "8"}
        created = self.until(
            lambda: self.request("POST", f"{self.url}/files/", headers={**version, "Upload-Complete": "?0"}),
            (201,),
        )
        location = created.headers["Location"]

        def at(offset: int) -> dict[str, str]:
            return {
                **version,
                "Content-Type": "application/partial-upload",
                "Upload-Offset": str(offset),
                "Upload-Complete": "?1" if offset + CHUNK >= len(data) else "?0",
            }

        self._send(location, data, at, version, 204)
        return location.rsplit("/", 1)[1]

    def _send(
        self,
        location: str,
        data: bytes,
        headers_at: Callable[[int], dict[str, str]],
        head_headers: dict[str, str],
        head_ok: int,
    ) -> None:
        """Every byte, a chunk a request; after a failed one, resume where HEAD says."""
        offset = 0
        deadline = time.monotonic() + UPLOAD_DEADLINE
        while offset < len(data):
            assert time.monotonic() < deadline, f"{location} stuck at {offset}: {self.last_answers(location)}"
            chunk = data[offset : offset + CHUNK]
            answer = self.request("PATCH", location, content=chunk, headers=headers_at(offset))
            if answer is not None and answer.status_code in (200, 204):
                offset += len(chunk)
                continue
            assert answer is None or answer.status_code in (409, 423) or answer.status_code >= 500, (
                answer.text
            )
            head = self.until(lambda: self.request("HEAD", location, headers=head_headers), (head_ok,))
            offset = int(head.headers["Upload-Offset"])  # resume where the server says


def _tus_js_parallel(url: str, path: Path) -> str:
    done = subprocess.run(
        ["node", "tus_upload.mjs", f"{url}/files/", str(path), "--parallel", "3", "--chunk-size", str(CHUNK)],
        cwd=REPO / "tests" / "js",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().rsplit("/", 1)[1]


class EventFollower:
    """Every event of every upload, read from one process, then (``switch``) from another
    with ``Last-Event-ID``."""

    def __init__(self, first: LiveServer) -> None:
        self.events: list[SseEvent] = []
        self.reconnected_at: int | None = None
        self._next: LiveServer | None = None
        self._stop = threading.Event()
        self._server = first
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            headers = {}
            if self.events and self.events[-1].id is not None:
                headers["Last-Event-ID"] = str(self.events[-1].id)
            server = self._server
            try:
                with httpx.stream(
                    "GET", f"{server.url}/api/v1/events", headers=headers, timeout=None
                ) as response:
                    self._response = response
                    for event in read_events(response):
                        if isinstance(event, SseEvent):
                            self.events.append(event)
                        if self._next is not None or self._stop.is_set():
                            break
            except httpx.HTTPError:
                pass
            if self._next is not None:
                self.reconnected_at = len(self.events)
                self._server, self._next = self._next, None

    def switch(self, to: LiveServer) -> None:
        self._next = to

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)


def test_uploads_through_three_processes_survive_a_killed_one(cluster: Cluster, tmp_path: Path) -> None:
    rng = random.Random(15)
    sizes = [rng.randint(MiB, LARGEST) for _ in range(UPLOADS)]
    payloads = [rng.randbytes(size) for size in sizes]
    client = Client(cluster.proxy.url)
    follower = EventFollower(cluster.apis[0])
    time.sleep(0.5)
    done: dict[str, bytes] = {}
    done_lock = threading.Lock()

    def upload(index: int) -> None:
        data = payloads[index]
        upload_id = client.draft(data) if index % 10 == 3 else client.tus(data)
        with done_lock:
            done[upload_id] = data

    killed_at = restarted_at = 0.0
    parallel_files = [tmp_path / f"parallel-{n}.bin" for n in range(2)]
    for n, path in enumerate(parallel_files):
        path.write_bytes(rng.randbytes(3 * MiB + n))
    with ThreadPoolExecutor(AT_ONCE) as pool:
        futures = [pool.submit(upload, index) for index in range(UPLOADS)]
        parallel = [pool.submit(_tus_js_parallel, cluster.proxy.url, path) for path in parallel_files]
        while sum(future.done() for future in futures) < UPLOADS // 3:
            time.sleep(0.1)
        killed_at = time.monotonic()
        cluster.apis[1].kill()  # SIGKILL: whatever it was writing is cut
        follower.switch(cluster.apis[2])  # and the event stream moves to another process
        time.sleep(1)
        cluster.apis[1].start()
        restarted_at = time.monotonic()
        for future in futures:
            future.result()
        for path, parallel_upload in zip(parallel_files, parallel, strict=True):
            done[parallel_upload.result()] = path.read_bytes()
    assert len(done) == UPLOADS + len(parallel_files)

    # Every upload ends ready, whole: the sha256 the worker found is that of the bytes sent.
    deadline = time.monotonic() + 180  # a lost task is sent again after a minute
    pending = set(done)
    states: dict[str, str] = {}
    while pending:
        for upload_id in list(pending):
            status = httpx.get(f"{cluster.proxy.url}/api/v1/uploads/{upload_id}", timeout=30).json()
            states[upload_id] = status["state"]
            assert status["state"] != "failed", status
            if status["state"] == "ready":
                assert status["sha256"] == hashlib.sha256(done[upload_id]).hexdigest(), upload_id
                pending.discard(upload_id)
        assert time.monotonic() < deadline, f"not ready: {[(u, states.get(u)) for u in pending]}"
        time.sleep(0.5)

    # Server errors only from the killed process's moment (what it had in flight).
    late = [failure for failure in client.failures if not killed_at <= failure.at <= restarted_at + 5]
    assert late == [], late

    # The event stream saw every upload become ready, each upload's events in order, with
    # no event twice across the reconnection to another process.
    deadline = time.monotonic() + 30
    while {e.data.get("upload_id") for e in follower.events if e.type == "upload.ready"} < set(done):
        assert time.monotonic() < deadline, "the event stream missed uploads"
        time.sleep(0.2)
    follower.stop()
    assert follower.reconnected_at is not None
    ids = [event.id for event in follower.events]
    assert len(ids) == len(set(ids)), "an event came twice"
    # A PATCH the kill cut may have recorded its upload complete just before the process
    # died, and so never announced it: only such an upload may lack ``upload.received``.
    cut = {failure.url.rsplit("/", 1)[1] for failure in client.failures if failure.method == "PATCH"}
    for upload_id in done:
        types = [e.type for e in follower.events if e.data.get("upload_id") == upload_id]
        if "upload.received" not in types and upload_id in cut:
            continue
        assert types.index("upload.received") < types.index("upload.ready"), types
        if "upload.created" in types:  # (an upload created before the stream opened has none)
            assert types.index("upload.created") < types.index("upload.received"), types

    assert_invariant(cluster.settings, {upload_id: [data] for upload_id, data in done.items()})


def test_two_writers_on_two_processes_never_interleave(cluster: Cluster) -> None:
    first, second = os.urandom(4 * MiB), os.urandom(4 * MiB)
    created = httpx.post(cluster.proxy.tus_url, headers={**TUS, "Upload-Length": str(len(first))})
    location = created.headers["Location"]
    path = location.removeprefix(cluster.proxy.url)
    answers: list[int] = []

    def write(server: LiveServer, data: bytes) -> None:
        headers = {**TUS, "Content-Type": OFFSET_STREAM, "Upload-Offset": "0"}
        answer = httpx.patch(f"{server.url}{path}", content=data, headers=headers, timeout=60)
        answers.append(answer.status_code)

    writers = [
        threading.Thread(target=write, args=(cluster.apis[0], first)),
        threading.Thread(target=write, args=(cluster.apis[2], second)),
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
    assert all(status in (204, 409, 423) for status in answers), answers
    # Whatever was stored is one writer's bytes, in order, never a mix of both; finish
    # the upload with that writer's data.
    offset = int(httpx.head(location, headers=TUS).headers["Upload-Offset"])
    upload_id = location.rsplit("/", 1)[1]
    rows = assert_invariant(cluster.settings, {upload_id: [first, second]})
    assert any(row.id == upload_id for row in rows)
    if offset < len(first):
        content = httpx.get(f"{cluster.proxy.url}/api/v1/uploads/{upload_id}", timeout=30).json()
        assert content["offset"] == offset
