"""Webhooks that are never lost: kill -9 of the API right after completions, with the
receiver down, on SQLite and PostgreSQL; Redis killed (every key gone) under the full
stack. Every event arrives, under one id each, in order per upload."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import fresh_postgres_database
from tests.faults.conftest import RedisServer
from tests.faults.invariant import assert_invariant
from tests.support import (
    PATCH_HEADERS,
    TUS,
    LiveServer,
    WebhookReceiver,
    WorkerProcess,
    assert_every_event_delivered,
    spawn_uploader,
    start_server,
    stop_process,
)
from uploader.settings import Settings

pytestmark = [pytest.mark.faults, pytest.mark.e2e]
EVENTS = ["upload.received", "upload.ready"]


def webhook_env(receiver: WebhookReceiver) -> dict[str, str]:
    return {
        "UPLOADER_WEBHOOK_URL": receiver.url,
        "UPLOADER_WEBHOOK_SECRET": "whsec-faults",
        "UPLOADER_WEBHOOK_BACKOFF_SECONDS": "0.2",
        "UPLOADER_WEBHOOK_POLL_SECONDS": "0.5",
    }


@contextlib.contextmanager
def database_of(kind: str, data_dir: Path) -> Iterator[str]:
    if kind == "postgres":
        with fresh_postgres_database() as url:
            yield url
    else:
        yield f"sqlite+aiosqlite:///{data_dir / 'uploader.db'}"


def upload(server: LiveServer, data: bytes) -> str:
    created = httpx.post(server.tus_url, headers={**TUS, "Upload-Length": str(len(data))})
    assert created.status_code == 201, created.text
    sent = httpx.patch(
        created.headers["Location"], content=data, headers={**PATCH_HEADERS, "Upload-Offset": "0"}
    )
    assert sent.status_code == 204, sent.text
    return str(created.headers["Location"]).rsplit("/", 1)[1]


def wait_ready(server_url: str, upload_ids: list[str], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    for upload_id in upload_ids:
        while httpx.get(f"{server_url}/api/v1/uploads/{upload_id}").json()["state"] != "ready":
            assert time.monotonic() < deadline, f"{upload_id} never became ready"
            time.sleep(0.1)


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_kill_9_right_after_completions_with_the_receiver_down_loses_no_webhook(
    tmp_path: Path, database: str
) -> None:
    receiver = WebhookReceiver()
    receiver.down()
    data_dir = tmp_path / "server"
    data_dir.mkdir()
    with database_of(database, data_dir) as database_url:
        server = start_server(data_dir, UPLOADER_DATABASE_URL=database_url, **webhook_env(receiver))
        try:
            contents = [os.urandom(2000 + n) for n in range(6)]
            files = {upload(server, data): data for data in contents}
            server.kill()  # within milliseconds of the last completion: nothing was sent
            receiver.up()
            server.start()
            wait_ready(server.url, list(files))
            assert_every_event_delivered(receiver, {upload_id: EVENTS for upload_id in files})
            settings = Settings(data_dir=data_dir, database_url=database_url)
            rows = assert_invariant(settings, {uid: [data] for uid, data in files.items()}, server.url)
            assert {row.id for row in rows} == set(files)
        finally:
            server.stop()
            receiver.close()


def test_redis_killed_under_the_full_stack_loses_no_webhook(tmp_path: Path, own_redis: RedisServer) -> None:
    receiver = WebhookReceiver()
    receiver.down()
    with fresh_postgres_database() as database_url:
        env = {
            **webhook_env(receiver),
            "UPLOADER_DATABASE_URL": database_url,
            "UPLOADER_STORAGE_URL": (tmp_path / "files").as_uri(),
            "UPLOADER_REDIS_URL": own_redis.url,
            "UPLOADER_REDIS_PREFIX": "outbox-faults",
            "UPLOADER_PROCESSING": "celery",
        }
        api = start_server(tmp_path / "api", **env)
        worker = WorkerProcess(tmp_path / "worker.log", {**api.env})
        beat = spawn_uploader(
            ["beat"], {**api.env, "UPLOADER_DATA_DIR": str(tmp_path / "beat")}, tmp_path / "beat.log"
        )
        try:
            worker.start()
            contents = [os.urandom(3000 + n) for n in range(4)]
            files = {upload(api, data): data for data in contents}
            wait_ready(api.url, list(files))  # the worker made them ready; the receiver took nothing
            assert receiver.received == []
            own_redis.kill()  # the broker and every queued task in it are gone
            receiver.up()
            time.sleep(1)
            own_redis.start()  # empty: whatever was queued is not coming back
            assert_every_event_delivered(receiver, {upload_id: EVENTS for upload_id in files}, seconds=90)
            settings = Settings(database_url=database_url, storage_url=env["UPLOADER_STORAGE_URL"])
            assert_invariant(settings, {uid: [data] for uid, data in files.items()}, api.url)
        finally:
            stop_process(beat)
            worker.stop()
            api.stop()
            receiver.close()
