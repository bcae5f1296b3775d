"""Blocking hooks over HTTP: pre-create on tus, the IETF draft and forms, pre-terminate;
a rejection's status and message reach the client, metadata merges at pre-create, and a
hook that is slow, down or answers nonsense fails closed with nothing created."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import pytest

from tests.api.helpers import create, patch, upload_id
from tests.hooks.conftest import HookReceiver
from tests.support import TUS, in_process_client, metadata, stored_objects
from uploader.settings import Settings
from uploader.webhooks.signing import verify

SECRET = "hook-signing-secret"


def _hooked(settings: Settings, receiver: HookReceiver, **changes: Any) -> Settings:
    return settings.model_copy(
        update={
            "hook_url": receiver.url,
            "hook_secret": None,
            "webhook_secret": SECRET,
            "hook_timeout_seconds": 1.0,
            "hook_events": ["pre-create", "pre-terminate"],
            **changes,
        }
    )


async def _tus(client: httpx.AsyncClient, **headers: str) -> httpx.Response:
    meta = metadata(filename="report.pdf", filetype="application/pdf")
    return await client.post(
        "/files/", headers={**TUS, "Upload-Length": "5", "Upload-Metadata": meta, **headers}
    )


async def _ietf(client: httpx.AsyncClient) -> httpx.Response:
    headers = {"Upload-Draft-Interop-Version": "6", "Upload-Complete": "?1", "Content-Type": "text/plain"}
    return await client.post("/files/", content=b"hello", headers=headers)


async def _form(client: httpx.AsyncClient) -> httpx.Response:
    return await client.post(
        "/api/v1/uploads", files={"file": ("a.txt", b"hello", "text/plain")}, data={"album": "x"}
    )


PROTOCOLS = {"tus": _tus, "ietf": _ietf, "form": _form}


async def _nothing_created(client: httpx.AsyncClient, settings: Settings) -> None:
    assert (await client.get("/api/v1/uploads")).json()["items"] == []
    assert stored_objects(settings) == []


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
async def test_a_pre_create_rejection_reaches_the_client_and_nothing_is_created(
    settings: Settings, hook_receiver: HookReceiver, protocol: str
) -> None:
    hook_receiver.answer("pre-create", body={"reject": {"status": 422, "message": "no uploads on Sundays"}})
    async with in_process_client(_hooked(settings, hook_receiver)) as client:
        response = await PROTOCOLS[protocol](client)
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "hook.rejected"
        assert response.json()["detail"] == "no uploads on Sundays"
        await _nothing_created(client, settings)
    assert hook_receiver.events() == ["pre-create"]


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
async def test_pre_create_metadata_is_merged_into_the_upload(
    settings: Settings, hook_receiver: HookReceiver, protocol: str
) -> None:
    hook_receiver.answer("pre-create", body={"metadata": {"tenant": "acme", "filename": "renamed.txt"}})
    async with in_process_client(_hooked(settings, hook_receiver)) as client:
        response = await PROTOCOLS[protocol](client)
        assert response.status_code == 201, response.text
        listed = (await client.get("/api/v1/uploads")).json()["items"]
        assert len(listed) == 1
        assert listed[0]["metadata"]["tenant"] == "acme"
        assert listed[0]["filename"] == "renamed.txt"
        # The hook was told the id the upload then got.
        assert hook_receiver.asked[0].document["upload"]["id"] == listed[0]["id"]


async def test_the_hook_request_is_signed_and_carries_no_credentials(
    settings: Settings, hook_receiver: HookReceiver
) -> None:
    keyed = _hooked(settings, hook_receiver, api_keys={"secret-key-1": "nina"})
    async with in_process_client(keyed) as client:
        response = await _tus(
            client, Authorization="Bearer secret-key-1", Cookie="session=abc", **{"X-Request-Note": "hi"}
        )
        assert response.status_code == 201
    asked = hook_receiver.asked[0]
    assert verify(
        SECRET, asked.headers["X-Uploader-Timestamp"], asked.body, asked.headers["X-Uploader-Signature"]
    )
    assert asked.headers["X-Uploader-Event"] == "pre-create"
    document = asked.document
    assert document["type"] == "pre-create"
    assert document["principal"] == "nina"
    assert document["upload"]["length"] == 5
    assert document["upload"]["metadata"]["filename"] == "report.pdf"
    forwarded = {name.lower() for name in document["request"]["headers"]}
    assert "x-request-note" in forwarded
    assert not forwarded & {"authorization", "cookie", "x-api-key"}
    assert b"secret-key-1" not in asked.body
    assert document["request"]["client"] == "127.0.0.1"


BAD_ANSWERS = {
    "timeout": {"delay": 2.0},
    "500": {"status": 500},
    "not json": {"raw": b"<html>ok</html>"},
    "wrong shape": {"body": {"allow": True}},
    "reject status 302": {"body": {"reject": {"status": 302, "message": "elsewhere"}}},
    "reject status 500": {"body": {"reject": {"status": 500, "message": "boom"}}},
    "metadata not strings": {"body": {"metadata": {"size": 5}}},
    "redirect": {"status": 307, "headers": {"Location": "http://169.254.169.254/latest/"}},
}


@pytest.mark.parametrize("case", list(BAD_ANSWERS))
async def test_a_hook_that_does_not_answer_usably_fails_closed(
    settings: Settings, hook_receiver: HookReceiver, case: str
) -> None:
    hook_receiver.answer("pre-create", **BAD_ANSWERS[case])
    async with in_process_client(_hooked(settings, hook_receiver)) as client:
        response = await _tus(client)
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "hook.unavailable"
        assert response.headers["Retry-After"]
        await _nothing_created(client, settings)
    assert hook_receiver.events() == ["pre-create"]  # a redirect was not followed


async def test_a_hook_receiver_that_is_down_fails_closed(
    settings: Settings, hook_receiver: HookReceiver
) -> None:
    down = _hooked(settings, hook_receiver, hook_url="http://127.0.0.1:9/hooks")
    async with in_process_client(down) as client:
        for protocol in PROTOCOLS.values():
            response = await protocol(client)
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "hook.unavailable"
        await _nothing_created(client, settings)


async def test_pre_terminate_can_refuse_and_its_wait_holds_no_lock(
    settings: Settings, hook_receiver: HookReceiver
) -> None:
    async with in_process_client(_hooked(settings, hook_receiver, hook_timeout_seconds=30.0)) as client:
        path = await create(client, 10)
        hook_receiver.answer("pre-terminate", body={"reject": {"status": 409, "message": "keep it"}})
        refused = await client.delete(path, headers=TUS)
        assert refused.status_code == 409
        assert refused.json()["code"] == "hook.rejected"
        assert (await client.head(path, headers=TUS)).status_code == 200
        # A slow hook: the upload takes bytes and answers its status meanwhile.
        thinking = threading.Event()
        hook_receiver.answer("pre-terminate", hold=thinking)
        deleting = asyncio.create_task(client.delete(path, headers=TUS))
        try:
            await hook_receiver.until_asked(["pre-create", "pre-terminate", "pre-terminate"])
            assert (await patch(client, path, 0, b"abcde")).status_code == 204
            status = await client.get(f"/api/v1/uploads/{upload_id(path)}")
            assert status.json()["offset"] == 5
            assert not deleting.done()  # still waiting for the hook
        finally:
            thinking.set()
        assert (await deleting).status_code == 204
        assert (await client.head(path, headers=TUS)).status_code == 404
    assert hook_receiver.events() == ["pre-create", "pre-terminate", "pre-terminate"]


async def test_a_slow_pre_create_holds_up_no_other_creation(
    settings: Settings, hook_receiver: HookReceiver
) -> None:
    thinking = threading.Event()
    calls = 0

    def slow_first(_document: dict[str, Any]) -> tuple[int, bytes, dict[str, str], float]:
        nonlocal calls
        calls += 1
        if calls == 1:
            thinking.wait(timeout=60)
        return 200, b"{}", {}, 0.0

    hook_receiver.answers["pre-create"] = slow_first
    async with in_process_client(_hooked(settings, hook_receiver, hook_timeout_seconds=30.0)) as client:
        slow = asyncio.create_task(_tus(client))
        try:
            await hook_receiver.until_asked(["pre-create"])
            quick = await asyncio.wait_for(_tus(client), timeout=10)
            assert quick.status_code == 201
            assert not slow.done()
        finally:
            thinking.set()
        assert (await slow).status_code == 201


async def test_only_the_chosen_events_are_sent(settings: Settings, hook_receiver: HookReceiver) -> None:
    chosen = _hooked(settings, hook_receiver, hook_events=["pre-terminate"])
    async with in_process_client(chosen) as client:
        path = await create(client, 3)
        assert hook_receiver.events() == []
        assert (await client.delete(path, headers=TUS)).status_code == 204
    assert hook_receiver.events() == ["pre-terminate"]


def test_a_hook_url_without_a_secret_or_with_unknown_events_is_refused() -> None:
    with pytest.raises(ValueError, match="UPLOADER_HOOK_SECRET"):
        Settings(hook_url="http://127.0.0.1:9/hooks")
    with pytest.raises(ValueError, match="unknown hook events"):
        Settings(hook_url="http://127.0.0.1:9/hooks", hook_secret="s", hook_events=["post-finish"])
