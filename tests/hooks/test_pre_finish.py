"""The pre-finish hook: asked after the last byte is stored and sniffed, before the
upload is received, on tus, the IETF draft and forms. A rejection ends the upload
failed without its bytes; a hook that is away leaves it resumable, never received; the
wait holds no lock. On SQLite and PostgreSQL with local storage, and on S3."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from typing import Any

import httpx
import pytest

from tests.api.helpers import create, patch, settled_status, upload_id
from tests.documents import pdf_document
from tests.hooks.conftest import HookReceiver
from tests.hooks.test_hooks import PROTOCOLS, SECRET
from tests.support import TUS, in_process_client, stored_objects
from uploader.settings import Settings

PDF = pdf_document(pages=2)  # a real one: processing reads it


@pytest.fixture(params=["sqlite+local", "postgres+local", "postgres+s3"])
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """On S3 too: a resumed upload finds its object completed (no multipart upload left)."""
    database, storage = request.param.split("+")
    return database, storage


def _hooked(settings: Settings, receiver: HookReceiver, **changes: Any) -> Settings:
    return settings.model_copy(
        update={
            "hook_url": receiver.url,
            "hook_secret": None,
            "webhook_secret": SECRET,
            "hook_timeout_seconds": 1.0,
            "hook_events": ["pre-finish"],
            **changes,
        }
    )


async def _tus_whole(client: httpx.AsyncClient) -> httpx.Response:
    """A tus upload of five bytes: the response of its last PATCH."""
    path = await create(client, 5)
    return await patch(client, path, 0, b"hello")


FINISHING = {**PROTOCOLS, "tus": _tus_whole}


async def _created_id(client: httpx.AsyncClient) -> str:
    items = (await client.get("/api/v1/uploads")).json()["items"]
    assert len(items) == 1
    return str(items[0]["id"])


@pytest.mark.parametrize("protocol", list(FINISHING))
async def test_a_pre_finish_rejection_fails_the_upload_and_deletes_its_bytes(
    settings: Settings, hook_receiver: HookReceiver, protocol: str
) -> None:
    hook_receiver.answer("pre-finish", body={"reject": {"status": 451, "message": "not this file"}})
    async with in_process_client(_hooked(settings, hook_receiver)) as client:
        response = await FINISHING[protocol](client)
        assert response.status_code == 451, response.text
        assert response.json()["code"] == "hook.rejected"
        assert response.json()["detail"] == "not this file"
        assert stored_objects(settings) == []
        if protocol == "form":  # a form's files were never recorded: nothing is left
            assert (await client.get("/api/v1/uploads")).json()["items"] == []
        else:
            uid = await _created_id(client)
            status = (await client.get(f"/api/v1/uploads/{uid}")).json()
            assert status["state"] == "failed"
            assert status["failure_reason"] == "hook.rejected: not this file"
            assert (await client.get(f"/api/v1/uploads/{uid}/content")).status_code == 410
    assert hook_receiver.events() == ["pre-finish"]


async def test_pre_finish_is_asked_with_every_byte_stored_and_sniffed(
    settings: Settings, hook_receiver: HookReceiver
) -> None:
    async with in_process_client(_hooked(settings, hook_receiver)) as client:
        path = await create(client, len(PDF))
        assert (await patch(client, path, 0, PDF[:3000])).status_code == 204
        assert hook_receiver.events() == []  # not before the last byte
        assert (await patch(client, path, 3000, PDF[3000:])).status_code == 204
        (asked,) = hook_receiver.asked
        document = asked.document["upload"]
        assert document["id"] == upload_id(path)
        assert document["state"] == "receiving"
        assert document["offset"] == document["length"] == len(PDF)
        assert document["sha256"] == hashlib.sha256(PDF).hexdigest()
        assert document["detected_type"] == "application/pdf"
        assert asked.document["principal"] == "anonymous"
        status = await settled_status(client, upload_id(path))
        assert status["state"] == "ready"
        assert status["sha256"] == hashlib.sha256(PDF).hexdigest()


@pytest.mark.parametrize("trouble", ["down", "timeout", "malformed"])
async def test_a_pre_finish_hook_that_is_away_leaves_the_upload_resumable_never_received(
    settings: Settings, hook_receiver: HookReceiver, trouble: str
) -> None:
    changes: dict[str, Any] = {}
    if trouble == "down":
        changes["hook_url"] = "http://127.0.0.1:9/hooks"
    elif trouble == "timeout":
        hook_receiver.answer("pre-finish", delay=1.5)
    else:
        hook_receiver.answer("pre-finish", raw=b"<html>ok</html>")
    async with in_process_client(_hooked(settings, hook_receiver, **changes)) as client:
        path = await create(client, len(PDF))
        assert (await patch(client, path, 0, PDF[:3000])).status_code == 204
        refused = await patch(client, path, 3000, PDF[3000:])
        assert refused.status_code == 503, refused.text
        assert refused.json()["code"] == "hook.unavailable"
        assert refused.headers["Retry-After"]
        # Not received, and no client is told it is done: the offset is where it was.
        head = await client.head(path, headers=TUS)
        assert head.headers["Upload-Offset"] == "3000"
        status = (await client.get(f"/api/v1/uploads/{upload_id(path)}")).json()
        assert status["state"] == "receiving"
        # The hook is back: the client resumes from the offset it is told, as tus
        # clients do, and the upload finishes with the bytes it sent.
    fixed = _hooked(settings, hook_receiver)
    hook_receiver.answers.clear()
    async with in_process_client(fixed) as client:
        assert (await patch(client, path, 3000, PDF[3000:])).status_code == 204
        status = await settled_status(client, upload_id(path))
        assert status["state"] == "ready"
        assert status["sha256"] == hashlib.sha256(PDF).hexdigest()
        assert (await client.get(f"/api/v1/uploads/{upload_id(path)}/content")).content == PDF


async def test_a_slow_pre_finish_holds_no_lock_and_a_deletion_meanwhile_wins(
    settings: Settings, hook_receiver: HookReceiver
) -> None:
    thinking = threading.Event()
    hook_receiver.answer("pre-finish", hold=thinking)
    async with in_process_client(_hooked(settings, hook_receiver, hook_timeout_seconds=30.0)) as client:
        path = await create(client, len(PDF))
        finishing = asyncio.create_task(patch(client, path, 0, PDF))
        try:
            await hook_receiver.until_asked(["pre-finish"])
            # The lock is free: a deletion goes through while the hook still thinks.
            deleted = await asyncio.wait_for(client.delete(path, headers=TUS), timeout=10)
            assert deleted.status_code == 204
            assert not finishing.done()
        finally:
            thinking.set()
        response = await finishing
        assert response.status_code == 404
        assert response.json()["code"] == "upload.not_found"
        assert stored_objects(settings) == []
