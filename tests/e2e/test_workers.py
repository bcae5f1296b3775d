"""The full stack: API and a real Celery worker process on PostgreSQL, Redis and S3 (moto)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import fresh_postgres_database
from tests.images import decompression_bomb, is_upright, jpeg, zip_archive
from tests.scanning import EICAR, SIGNATURE, ClamdServer
from tests.sse import SseEvent, events_of, read_events
from tests.support import (
    PATCH_HEADERS,
    S3_TEST_BUCKET,
    TUS,
    LiveServer,
    WebhookReceiver,
    WorkerProcess,
    metadata,
    redis_env,
    s3_celery_env,
    s3_client,
    spawn_uploader,
    start_server,
    stop_process,
    uploader_command,
)
from uploader.webhooks.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("celery-stack")]
MiB = 1024 * 1024
WEBHOOK_SECRET = "whsec-test"


@dataclass
class Stack:
    api: LiveServer
    worker: WorkerProcess
    webhooks: WebhookReceiver
    storage_prefix: str
    s3_endpoint: str
    env: dict[str, str]

    def upload(self, data: bytes, name: str, declared: str, chunk: int = 4 * MiB) -> str:
        """A tus upload; returns the upload id."""
        response = httpx.post(
            self.api.tus_url,
            headers={
                **TUS,
                "Upload-Length": str(len(data)),
                "Upload-Metadata": metadata(filename=name, filetype=declared),
            },
        )
        assert response.status_code == 201
        url = response.headers["Location"]
        for start in range(0, len(data), chunk):
            sent = httpx.patch(
                url,
                content=data[start : start + chunk],
                headers={**PATCH_HEADERS, "Upload-Offset": str(start)},
                timeout=60,
            )
            assert sent.status_code == 204, sent.text
        upload_id: str = url.rsplit("/", 1)[-1]
        return upload_id

    def status(self, upload_id: str) -> dict[str, Any]:
        result: dict[str, Any] = httpx.get(f"{self.api.url}/api/v1/uploads/{upload_id}").json()
        return result

    def settled(self, upload_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(upload_id)
            if status["state"] in ("ready", "failed", "rejected"):
                return status
            time.sleep(0.1)
        raise AssertionError(f"{upload_id} still {status['state']}; worker log:\n{self.worker.log()[-3000:]}")

    def derived_objects(self) -> set[str]:
        client = s3_client(self.s3_endpoint)
        listed = client.list_objects_v2(Bucket=S3_TEST_BUCKET, Prefix=self.storage_prefix + "/")
        return {o["Key"] for o in listed.get("Contents", []) if ".derived/" in o["Key"]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str, redis_url: str) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("stack")
    prefix = secrets.token_hex(6)
    receiver = WebhookReceiver(failures=1)  # the first delivery fails: retries are exercised
    with fresh_postgres_database() as database_url, redis_env_context(redis_url) as redis_settings:
        env = {
            **s3_celery_env(database_url, redis_settings, s3_endpoint, prefix),
            # The checksum of big files is left to the worker: a step long enough to kill in.
            "UPLOADER_INLINE_DIGEST_MAX_BYTES": str(MiB),
            "UPLOADER_TASK_RETRY_BACKOFF_SECONDS": "0.2",
            "UPLOADER_WEBHOOK_URL": receiver.url,
            "UPLOADER_WEBHOOK_SECRET": WEBHOOK_SECRET,
            # beat drains the outbox this often: retries of refused deliveries.
            "UPLOADER_WEBHOOK_POLL_SECONDS": "0.5",
            "UPLOADER_WEBHOOK_BACKOFF_SECONDS": "0.2",
        }
        api = start_server(root / "api", **env)
        worker = WorkerProcess(root / "worker.log", {**os.environ, **api.env})
        beat_env = {**os.environ, **api.env, "UPLOADER_DATA_DIR": str(root / "beat")}
        beat = spawn_uploader(["beat"], beat_env, root / "beat.log")
        try:
            worker.start()
            yield Stack(api, worker, receiver, prefix, s3_endpoint, env)
        finally:
            stop_process(beat)
            worker.stop()
            api.stop()
            receiver.close()


class redis_env_context:
    """``redis_env`` as a context manager, for a module-scoped fixture."""

    def __init__(self, redis_url: str) -> None:
        self.generator = redis_env(redis_url)

    def __enter__(self) -> dict[str, str]:
        return next(self.generator)

    def __exit__(self, *exc: object) -> None:
        for _ in self.generator:
            pass


def follow(
    stack: Stack, upload_id: str, headers: dict[str, str] | None = None
) -> tuple[threading.Thread, list[SseEvent]]:
    """Read an upload's event stream in a thread until it ends."""
    seen: list[SseEvent] = []
    subscribed = threading.Event()

    def read() -> None:
        url = f"{stack.api.url}/api/v1/uploads/{upload_id}/events"
        with httpx.stream("GET", url, headers=headers or {}, timeout=60) as response:
            subscribed.set()
            seen.extend(e for e in read_events(response) if isinstance(e, SseEvent))

    reader = threading.Thread(target=read)
    reader.start()
    assert subscribed.wait(10)
    return reader, seen


def create_only(stack: Stack, length: int, name: str, declared: str) -> str:
    response = httpx.post(
        stack.api.tus_url,
        headers={
            **TUS,
            "Upload-Length": str(length),
            "Upload-Metadata": metadata(filename=name, filetype=declared),
        },
    )
    assert response.status_code == 201
    location: str = response.headers["Location"]
    return location


def send(url: str, data: bytes, chunk: int = 4 * MiB) -> None:
    for start in range(0, len(data), chunk):
        # A long bound: a large chunk's answer waits for its last part to reach S3, which
        # took more than httpx's default 5 s on a loaded machine.
        sent = httpx.patch(
            url,
            content=data[start : start + chunk],
            headers={**PATCH_HEADERS, "Upload-Offset": str(start)},
            timeout=60,
        )
        assert sent.status_code == 204, sent.text


def test_jpeg_with_exif_orientation_is_processed_live_by_the_worker(stack: Stack) -> None:
    data = jpeg(2400, 1600, orientation=6)
    url = create_only(stack, len(data), "portrait.jpg", "image/jpeg")
    upload_id = url.rsplit("/", 1)[-1]
    reader, seen = follow(stack, upload_id)
    send(url, data, chunk=256 * 1024)
    reader.join(60)
    assert not reader.is_alive(), "the stream did not end after the upload was ready"
    types = [e.type for e in seen]
    states = [
        t for t in types if t in ("upload.received", "upload.processing", "upload.ready", "upload.failed")
    ]
    assert states == ["upload.received", "upload.processing", "upload.ready"]
    assert types[-1] == "upload.ready"
    started = [e.data["step"] for e in seen if e.type == "processing.step_started"]
    done = [e.data["step"] for e in seen if e.type == "processing.step_done"]
    assert started == done == ["sniff", "sha256", "variants"]
    progress = [e.data["progress"] for e in seen if e.type == "processing.step_progress"]
    assert progress
    assert progress == sorted(progress)
    assert progress[-1] == 1.0
    assert len([e for e in seen if e.type == "variant.ready"]) == 4
    status = stack.status(upload_id)
    assert status["detected_type"] == "image/jpeg"
    assert (status["media"]["width"], status["media"]["height"]) == (2400, 1600)
    for variant in status["variants"]:
        response = httpx.get(f"{stack.api.url}{variant['url']}")
        assert response.status_code == 200
        assert is_upright(response.content), variant["name"]
    # Webhooks: received (from the API) and ready (from the worker), signed; the first
    # delivery was refused by the receiver and retried.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not {"upload.received", "upload.ready"} <= set(
        stack.webhooks.events()
    ):
        time.sleep(0.1)
    mine = [(h, b) for h, b in stack.webhooks.received if json.loads(b)["upload_id"] == upload_id]
    assert {json.loads(b)["type"] for _, b in mine} == {"upload.received", "upload.ready"}
    for headers, body in mine:
        assert verify(WEBHOOK_SECRET, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
        assert not verify("wrong-secret", headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])


def test_reconnecting_mid_pipeline_replays_only_what_was_missed(stack: Stack) -> None:
    data = jpeg(3000, 2000)
    url = create_only(stack, len(data), "mid.jpg", "image/jpeg")
    upload_id = url.rsplit("/", 1)[-1]
    first: list[SseEvent] = []
    subscribed = threading.Event()

    def read_until_processing() -> None:
        stream_url = f"{stack.api.url}/api/v1/uploads/{upload_id}/events"
        with httpx.stream("GET", stream_url, timeout=60) as response:
            subscribed.set()
            for event in read_events(response):
                if isinstance(event, SseEvent):
                    first.append(event)
                    if event.type == "processing.step_started":
                        return  # the client goes away in the middle of the pipeline

    reader = threading.Thread(target=read_until_processing)
    reader.start()
    assert subscribed.wait(10)
    send(url, data)
    reader.join(60)
    assert first[-1].type == "processing.step_started"
    rest = events_of(stack.api, upload_id, **{"Last-Event-ID": str(first[-1].id)})
    everything = events_of(stack.api, upload_id)
    assert rest
    assert rest[-1].type == "upload.ready"
    assert [e.id for e in first + rest] == [e.id for e in everything]
    assert all(e.id is not None and e.id > first[-1].id for e in rest)


def test_worker_killed_mid_step_ends_ready_once_with_one_set_of_variants(stack: Stack) -> None:
    # A real JPEG followed by 200 MiB of other bytes: the checksum step reads it all from S3
    # (about a second here), time enough to kill the worker in the middle of it.
    data = jpeg(2000, 1500) + os.urandom(200 * MiB)
    derived_before = stack.derived_objects()
    url = create_only(stack, len(data), "big.jpg", "image/jpeg")
    upload_id = url.rsplit("/", 1)[-1]
    reader, seen = follow(stack, upload_id)
    send(url, data, chunk=16 * MiB)
    victims = stack.worker.pool_processes()
    deadline = time.monotonic() + 30
    while not any(e.type == "processing.step_started" and e.data["step"] == "sha256" for e in list(seen)):
        assert time.monotonic() < deadline, "the checksum step never started"
        time.sleep(0.01)
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    reader.join(90)
    status = stack.settled(upload_id)
    assert status["state"] == "ready", status["failure_reason"]
    assert "processing.resumed" in stack.worker.log()  # the task was delivered again
    assert stack.worker.pool_processes() != victims
    history = events_of(stack.api, upload_id)
    assert [e.type for e in history].count("upload.ready") == 1
    assert [e.type for e in history].count("upload.processing") == 1
    assert len(status["variants"]) == 4
    assert len(stack.derived_objects() - derived_before) == 4


def test_bad_inputs_end_with_the_right_state_and_the_worker_keeps_serving(stack: Stack) -> None:
    bomb = stack.upload(decompression_bomb(), "bomb.png", "image/png")
    whole = jpeg(1600, 1200)
    truncated = stack.upload(whole[: len(whole) // 2], "cut.jpg", "image/jpeg")
    archive = stack.upload(zip_archive(), "photo.jpg", "image/jpeg")
    bomb_status = stack.settled(bomb)
    assert bomb_status["state"] == "failed"
    assert bomb_status["failure_reason"].startswith("image.too_many_pixels")
    truncated_status = stack.settled(truncated)
    assert truncated_status["state"] == "failed"
    assert "truncated" in truncated_status["failure_reason"]
    archive_status = stack.settled(archive)
    assert archive_status["state"] == "ready"
    assert archive_status["detected_type"] == "application/zip"
    assert archive_status["type_mismatch"] is True
    assert archive_status["variants"] == []
    # In the full stack the workers process every upload, images or not.
    worked = [line for line in stack.worker.log().splitlines() if '"processing.ready"' in line]
    assert any(archive in line for line in worked)
    fine = stack.settled(stack.upload(whole, "fine.jpg", "image/jpeg"))
    assert fine["state"] == "ready"
    assert len(fine["variants"]) == 4
    assert stack.worker.process is not None
    assert stack.worker.process.poll() is None
    # Failed uploads announce themselves to the webhook too.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "upload.failed" not in stack.webhooks.events():
        time.sleep(0.1)
    assert "upload.failed" in stack.webhooks.events()


def test_reprocess_on_the_worker(stack: Stack) -> None:
    upload_id = stack.upload(jpeg(1200, 900), "again.jpg", "image/jpeg")
    first = stack.settled(upload_id)
    response = httpx.post(f"{stack.api.url}/api/v1/uploads/{upload_id}/reprocess")
    assert response.status_code == 202
    second = stack.settled(upload_id)
    assert second["state"] == "ready"
    assert second["processing"]["started_at"] != first["processing"]["started_at"]
    assert [e.type for e in events_of(stack.api, upload_id)].count("upload.ready") == 2


def test_beat_schedules_the_sweep_that_expires_uploads(stack: Stack, tmp_path: Path) -> None:
    """``uploader beat`` schedules the sweep and the worker runs it: an upload left
    unfinished past its expiry is removed."""
    short = {**stack.env, "UPLOADER_CLEANUP_INTERVAL_SECONDS": "0.5", "UPLOADER_UPLOAD_TTL_SECONDS": "1"}
    api = start_server(tmp_path / "short-ttl", **short)
    beat_env = {**os.environ, **short, "UPLOADER_DATA_DIR": str(tmp_path)}
    beat = spawn_uploader(["beat"], beat_env, tmp_path / "beat.log")
    try:
        url = create_only(stack, 100, "never.bin", "application/octet-stream").replace(stack.api.url, api.url)
        send(url, b"x" * 10)
        upload_id = url.rsplit("/", 1)[-1]
        deadline = time.monotonic() + 30
        while stack.status(upload_id)["state"] != "expired":
            assert time.monotonic() < deadline, "the sweep never expired the upload"
            time.sleep(0.2)
        assert httpx.head(url, headers=TUS).status_code in (404, 410)
    finally:
        beat.terminate()
        beat.wait(30)
        api.stop()


def test_transient_failures_retry_with_backoff_then_fail_readably(stack: Stack, tmp_path: Path) -> None:
    """A worker that cannot reach storage retries the step with growing delays, then ends
    the upload in ``failed`` with the reason; the upload's bytes are untouched."""
    stack.worker.stop()
    cut_off = WorkerProcess(
        tmp_path / "cut-off-worker.log",
        {
            **stack.worker.env,
            "UPLOADER_S3_ENDPOINT_URL": "http://127.0.0.1:9",  # nothing listens there
            "UPLOADER_S3_MAX_ATTEMPTS": "1",
            "UPLOADER_TASK_MAX_RETRIES": "3",
        },
    )
    try:
        cut_off.start()
        data = jpeg(800, 600)
        upload_id = stack.upload(data, "unlucky.jpg", "image/jpeg")
        status = stack.settled(upload_id, timeout=90)
        assert status["state"] == "failed"
        assert status["failure_reason"].startswith("processing.unavailable")
        retries = [json.loads(line) for line in cut_off.log().splitlines() if '"processing.retry"' in line]
        assert [r["attempt"] for r in retries] == [1, 2, 3]
        assert httpx.get(f"{stack.api.url}/api/v1/uploads/{upload_id}/content").content == data
    finally:
        cut_off.stop()
        stack.worker.start()
    # Once storage is reachable again, reprocessing succeeds.
    assert httpx.post(f"{stack.api.url}/api/v1/uploads/{upload_id}/reprocess").status_code == 202
    assert stack.settled(upload_id)["state"] == "ready"


def test_a_worker_scanning_with_clamd_rejects_eicar_and_reports_it(
    stack: Stack, clamd: ClamdServer, tmp_path: Path
) -> None:
    """EICAR through the full stack: a real worker streams it from S3 to clamd, the upload
    ends rejected with its bytes gone, and the signed webhook and the live event say so.
    A clean file on the same worker is ready."""
    stack.worker.stop()
    env = {**stack.worker.env, "UPLOADER_CLAMAV_URL": clamd.url}
    scanning = WorkerProcess(tmp_path / "scanning-worker.log", env)
    try:
        scanning.start()
        upload_id = stack.upload(EICAR, "eicar.com", "application/octet-stream")
        status = stack.settled(upload_id)
        assert status["state"] == "rejected", status
        assert status["failure_reason"] == f"malware: {SIGNATURE}"
        assert status["processing"]["steps"]["scan"]["state"] == "failed"
        content = httpx.get(f"{stack.api.url}/api/v1/uploads/{upload_id}/content")
        assert (content.status_code, content.json()["code"]) == (410, "upload.rejected")
        assert stack.webhooks.wait_for({"upload.rejected"})
        mine = [body for _, body in stack.webhooks.deliveries() if body["upload_id"] == upload_id]
        assert [body["type"] for body in mine][-1] == "upload.rejected"
        assert events_of(stack.api, upload_id)[-1].type == "upload.rejected"  # the stream ends there
        clean = stack.upload(b"a clean file\n" * 1000, "clean.txt", "text/plain")
        status = stack.settled(clean)
        assert status["state"] == "ready", status
        assert status["processing"]["steps"]["scan"]["detail"] == "clean"
    finally:
        scanning.stop()
        stack.worker.start()


def test_ping_worker_answers_for_a_running_worker_only(stack: Stack) -> None:
    """The compose health check of the worker: exit 0 while this host's worker answers."""
    env = {**os.environ, **stack.env}
    alive = subprocess.run([*uploader_command(), "ping-worker"], env=env, timeout=60, check=False)
    assert alive.returncode == 0
    elsewhere = {**env, "UPLOADER_REDIS_PREFIX": f"{stack.env['UPLOADER_REDIS_PREFIX']}-nobody"}
    nobody = subprocess.run([*uploader_command(), "ping-worker"], env=elsewhere, timeout=60, check=False)
    assert nobody.returncode == 1
