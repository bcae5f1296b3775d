"""Malware scanning with ClamAV in the embedded default: Debian's clamd with a signature
database of the tests' own, on local storage and on S3."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.helpers import settled_status, upload_bytes, upload_id
from tests.api.test_dedup import declared_creation
from tests.images import png
from tests.scanning import EICAR, SIGNATURE, ClamdServer, KillingRelay, eicar_in_zip
from tests.support import in_process_client, metadata, s3_client, stored_objects
from uploader.settings import Settings
from uploader.storage import s3 as s3_storage

pytestmark = pytest.mark.parametrize("backend", ["sqlite+local", "postgres+s3"], indirect=True)


def scanning(settings: Settings, clamd_url: str, **more: Any) -> Settings:
    return settings.model_copy(
        update={
            "clamav_url": clamd_url,
            "task_retry_backoff_seconds": 0.2,
            "task_max_retries": 2,
            **more,
        }
    )


async def send(client: httpx.AsyncClient, data: bytes, name: str) -> str:
    path = await upload_bytes(client, data, chunk=64 * 1024, **{"Upload-Metadata": metadata(filename=name)})
    return upload_id(path)


async def event_types(client: httpx.AsyncClient, uid: str) -> list[str]:
    """The upload's events once the one that ends it is among them (it is published just
    after the state is recorded and the bytes are removed)."""
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    for _ in range(100):
        types = [event.type for event in await runtime.events.history("anonymous", uid, None)]
        if {"upload.ready", "upload.rejected", "upload.failed"} & set(types):
            break
        await asyncio.sleep(0.05)
    return types


async def removed(settings: Settings, key: str) -> bool:
    """Whether storage holds nothing of ``key`` (the state is recorded before the bytes go,
    so this waits a little)."""
    for _ in range(100):
        if not [name for name in stored_objects(settings) if key in name and "quarantine/" not in name]:
            return True
        await asyncio.sleep(0.05)
    return False


def quarantined(settings: Settings, key: str) -> bytes:
    if settings.resolved_storage_url.startswith("s3://"):
        bucket, _, prefix = settings.resolved_storage_url.removeprefix("s3://").partition("/")
        assert settings.s3_endpoint_url is not None
        kept = s3_client(settings.s3_endpoint_url).get_object(Bucket=bucket, Key=f"{prefix}/quarantine/{key}")
        body: bytes = kept["Body"].read()
        return body
    return (settings.data_dir / "files-quarantine" / key).read_bytes()


async def storage_key(client: httpx.AsyncClient, uid: str) -> str:
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    from uploader.uploads import repository

    upload = await runtime.db.run(lambda s: repository.get(s, uid))
    assert upload is not None
    return str(upload.storage_key)


async def test_eicar_is_rejected_its_bytes_removed_and_its_download_gone(
    settings: Settings, clamd: ClamdServer
) -> None:
    configured = scanning(settings, clamd.url)
    async with in_process_client(configured) as client:
        uid = await send(client, EICAR, "eicar.com")
        status = await settled_status(client, uid)
        assert status["state"] == "rejected", status
        assert status["failure_reason"] == f"malware: {SIGNATURE}"
        key = await storage_key(client, uid)
        assert await removed(configured, key)
        content = await client.get(f"/api/v1/uploads/{uid}/content")
        assert content.status_code == 410
        assert content.json()["code"] == "upload.rejected"
        types = await event_types(client, uid)
        assert types[-1] == "upload.rejected"
        assert "processing.step_started" in types
        assert "upload.ready" not in types
        events = await client.get(f"/api/v1/uploads/{uid}/events")  # a finished stream ends
        assert "event: upload.rejected" in events.text


async def test_a_zip_holding_eicar_is_rejected(settings: Settings, clamd: ClamdServer) -> None:
    async with in_process_client(scanning(settings, clamd.unix_url)) as client:  # over the Unix socket
        uid = await send(client, eicar_in_zip(), "tools.zip")
        status = await settled_status(client, uid)
        assert status["state"] == "rejected", status
        assert status["failure_reason"] == f"malware: {SIGNATURE}"
        assert status["detected_type"] == "application/zip"


async def test_clean_files_are_scanned_before_anything_decodes_them_then_ready(
    settings: Settings, clamd: ClamdServer
) -> None:
    """Text would be ready as it arrives without scanning; with scanning, nothing is ready
    unscanned. An image is scanned before its variants are made."""
    async with in_process_client(scanning(settings, clamd.url)) as client:
        text = await send(client, b"just some notes\n" * 1000, "notes.txt")
        picture = await send(client, png(300, 200), "picture.png")
        for uid in (text, picture):
            status = await settled_status(client, uid)
            assert status["state"] == "ready", status
            steps = status["processing"]["steps"]
            assert steps["scan"] == {"state": "done", "seconds": steps["scan"]["seconds"], "detail": "clean"}
        steps = (await settled_status(client, picture))["processing"]["steps"]
        assert list(steps) == ["sniff", "sha256", "scan", "variants"]
        assert steps["variants"]["state"] == "done"
        types = await event_types(client, picture)
        started = [e for e in types if e == "processing.step_started"]
        assert len(started) == 4


async def test_quarantine_keeps_the_rejected_bytes_where_nothing_serves_them(
    settings: Settings, clamd: ClamdServer
) -> None:
    configured = scanning(settings, clamd.url, quarantine=True)
    async with in_process_client(configured) as client:
        uid = await send(client, EICAR, "eicar.com")
        status = await settled_status(client, uid)
        assert status["state"] == "rejected"
        key = await storage_key(client, uid)
        assert await removed(configured, key)
        assert (await client.get(f"/api/v1/uploads/{uid}/content")).status_code == 410
    assert quarantined(configured, key) == EICAR


async def test_a_large_rejected_file_is_quarantined_whole(
    settings: Settings, clamd: ClamdServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In S3, an object past CopyObject's limit is copied part by part (the limit is made
    small here): the quarantined copy is the file, byte for byte."""
    monkeypatch.setattr(s3_storage, "MAX_COPY_BYTES", 1)
    monkeypatch.setattr(s3_storage, "COPY_PART_BYTES", 5 * 1024 * 1024)
    data = EICAR + os.urandom(6 * 1024 * 1024)  # past clamd's StreamMaxLength here: rejected
    configured = scanning(settings, clamd.url, quarantine=True)
    async with in_process_client(configured) as client:
        uid = await send(client, data, "big.bin")
        assert (await settled_status(client, uid))["state"] == "rejected"
        key = await storage_key(client, uid)
        assert await removed(configured, key)
    assert quarantined(configured, key) == data


async def test_a_file_longer_than_clamd_takes_is_rejected_or_kept_unscanned_as_set(
    settings: Settings, clamd: ClamdServer
) -> None:
    data = os.urandom(clamd.stream_max_bytes + 100_000)
    async with in_process_client(scanning(settings, clamd.url)) as client:
        uid = await send(client, data, "large.bin")
        status = await settled_status(client, uid)
        assert status["state"] == "rejected", status
        assert status["failure_reason"].startswith("scan.too_large: ")
    async with in_process_client(scanning(settings, clamd.url, scan_oversize="skip")) as client:
        uid = await send(client, data, "large.bin")
        status = await settled_status(client, uid)
        assert status["state"] == "ready", status
        scan = status["processing"]["steps"]["scan"]
        assert scan["state"] == "skipped"
        assert "not scanned" in scan["detail"]


async def test_clamd_away_is_retried_then_the_upload_fails_never_ready_unscanned(
    settings: Settings, tmp_path: Path
) -> None:
    own = ClamdServer(tmp_path / "clamd")
    async with in_process_client(scanning(settings, own.url)) as client:
        uid = await send(client, b"harmless\n" * 100, "notes.txt")  # clamd is not running
        status = await settled_status(client, uid)
        assert status["state"] == "failed", status
        assert status["failure_reason"].startswith("scan.unavailable: ")
        assert status["processing"]["steps"]["scan"]["state"] == "pending"


async def test_clamd_killed_in_the_middle_of_a_scan_is_retried_once_it_is_back(
    settings: Settings, tmp_path: Path
) -> None:
    own = ClamdServer(tmp_path / "clamd")
    own.start()
    relay = KillingRelay(own, after_bytes=512 * 1024)
    data = os.urandom(1536 * 1024)
    try:
        # Retries 2, 6 and 14 s after the kill: clamd (a few seconds to start) is back by then.
        slow = scanning(settings, relay.url, task_retry_backoff_seconds=2.0, task_max_retries=3)
        async with in_process_client(slow) as client:
            uid = await send(client, data, "data.bin")
            await asyncio.to_thread(relay.killed.wait, 30)
            assert relay.killed.is_set(), "clamd was not killed mid-scan"
            await asyncio.to_thread(own.start)
            status = await settled_status(client, uid)
        assert status["state"] == "ready", status
        assert status["processing"]["steps"]["scan"]["detail"] == "clean"
        assert status["sha256"] == hashlib.sha256(data).hexdigest()
    finally:
        relay.close()
        own.stop()


@pytest.mark.parametrize("reprocessed", ["the first", "the deduplicated"])
async def test_bytes_found_to_be_malware_later_take_every_upload_sharing_them(
    settings: Settings, clamd: ClamdServer, reprocessed: str
) -> None:
    async with in_process_client(settings) as client:  # no scanning yet: EICAR is ready
        first = await send(client, EICAR, "eicar.com")
        assert (await settled_status(client, first))["state"] == "ready"
        linked = await declared_creation(client, EICAR)
        assert linked.status_code == 201, linked.text
        second = upload_id(linked.headers["Location"])
        key = await storage_key(client, first)
        assert await storage_key(client, second) == key  # one stored object
    configured = scanning(settings, clamd.url)
    async with in_process_client(configured) as client:  # signatures that know it now
        again = first if reprocessed == "the first" else second
        assert (await client.post(f"/api/v1/uploads/{again}/reprocess")).status_code == 202
        assert (await settled_status(client, again))["state"] == "rejected"
        for uid in (first, second):
            status = (await client.get(f"/api/v1/uploads/{uid}")).json()
            assert (status["state"], status["failure_reason"]) == ("rejected", f"malware: {SIGNATURE}"), uid
            content = await client.get(f"/api/v1/uploads/{uid}/content")
            assert (content.status_code, content.json()["code"]) == (410, "upload.rejected")
            assert (await event_types(client, uid))[-1] == "upload.rejected"
        assert await removed(configured, key)
