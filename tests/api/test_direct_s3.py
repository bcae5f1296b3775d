"""Direct uploads to S3 through the Companion-compatible routes, driven as @uppy/aws-s3
drives them: sign here, send the bytes to moto's S3 server over HTTP, complete here."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from tests.support import S3_TEST_BUCKET, in_process_client, stored_objects
from uploader.settings import Settings

MiB = 1024 * 1024
S3_BACKEND = [("postgres", "s3")]
ALICE, BOB = {"X-API-Key": "alice-key"}, {"X-API-Key": "bob-key"}


async def settled_status(client: httpx.AsyncClient, upload_id: str) -> dict[str, Any]:
    """Alice's upload once processing has ended (ready or failed), within 30 s."""
    async with asyncio.timeout(30):
        while True:
            status: dict[str, Any] = (await client.get(f"/api/v1/uploads/{upload_id}", headers=ALICE)).json()
            if status["state"] in ("ready", "failed"):
                return status
            await asyncio.sleep(0.05)


def direct_settings(settings: Settings, **changes: Any) -> Settings:
    values = {
        "api_keys": {"alice-key": "alice", "bob-key": "bob"},
        "s3_direct_poll_seconds": 3600.0,  # the tests say when to look
        **changes,
    }
    return settings.model_copy(update=values)


async def start_multipart(
    client: httpx.AsyncClient, name: str = "movie.bin", **headers: str
) -> dict[str, Any]:
    response = await client.post(
        "/s3/multipart",
        json={"filename": name, "type": "application/octet-stream", "metadata": {"album": "summer"}},
        headers=headers or ALICE,
    )
    assert response.status_code == 200, response.text
    started: dict[str, Any] = response.json()
    assert set(started) >= {"key", "uploadId", "bucket"}
    return started


async def put_part(client: httpx.AsyncClient, started: dict[str, Any], number: int, data: bytes) -> str:
    """Sign a part here and PUT it to S3, as the plugin does; its ETag."""
    signed = await client.get(
        f"/s3/multipart/{started['uploadId']}/{number}", params={"key": started["key"]}, headers=ALICE
    )
    assert signed.status_code == 200, signed.text
    async with httpx.AsyncClient() as s3:
        stored = await s3.put(signed.json()["url"], content=data)
    assert stored.status_code == 200, stored.text
    return stored.headers["etag"]


async def complete(
    client: httpx.AsyncClient, started: dict[str, Any], etags: list[str], **headers: str
) -> httpx.Response:
    return await client.post(
        f"/s3/multipart/{started['uploadId']}/complete",
        params={"key": started["key"]},
        json={"parts": [{"PartNumber": n, "ETag": etag} for n, etag in enumerate(etags, 1)]},
        headers=headers or ALICE,
    )


@pytest.mark.parametrize("backend", S3_BACKEND)
async def test_a_multipart_upload_goes_straight_to_s3_and_is_then_an_upload_like_any_other(
    settings: Settings,
) -> None:
    settings = direct_settings(settings)
    first, second = os.urandom(5 * MiB), os.urandom(1 * MiB + 123)
    async with in_process_client(settings) as client:
        started = await start_multipart(client)
        upload_id = started["upload_id"]
        assert started["bucket"] == S3_TEST_BUCKET
        status = (await client.get(f"/api/v1/uploads/{upload_id}", headers=ALICE)).json()
        assert (status["state"], status["protocol"], status["offset"]) == ("receiving", "s3-direct", 0)
        assert status["metadata"] == {
            "album": "summer",
            "filename": "movie.bin",
            "filetype": "application/octet-stream",
        }
        etags = [await put_part(client, started, 1, first)]
        etags.append(await put_part(client, started, 2, second))  # signing part 2 records part 1
        assert (await client.get(f"/api/v1/uploads/{upload_id}", headers=ALICE)).json()["offset"] == len(
            first
        )
        listed = await client.get(
            f"/s3/multipart/{started['uploadId']}", params={"key": started["key"]}, headers=ALICE
        )
        assert [(p["PartNumber"], p["Size"], p["ETag"]) for p in listed.json()] == [
            (1, len(first), etags[0]),
            (2, len(second), etags[1]),
        ]
        done = await complete(client, started, etags)
        assert done.status_code == 200, done.text
        body = done.json()
        assert body["key"] == started["key"]
        assert body["bucket"] == S3_TEST_BUCKET
        assert body["location"].endswith(started["key"])
        status = await settled_status(client, upload_id)
        assert status["state"] == "ready", status
        assert status["length"] == status["offset"] == len(first) + len(second)
        assert status["sha256"] == hashlib.sha256(first + second).hexdigest()
        content = await client.get(f"/api/v1/uploads/{upload_id}/content", headers=ALICE)
        assert content.content == first + second
    # The object and nothing else: no bookkeeping object, no open multipart upload.
    assert stored_objects(settings) == [started["key"]]


@pytest.mark.parametrize("backend", S3_BACKEND)
async def test_a_single_request_upload_is_found_when_its_status_is_read(settings: Settings) -> None:
    settings = direct_settings(settings)
    data = os.urandom(300_000)
    async with in_process_client(settings) as client:
        signed = await client.get(
            "/s3/params",
            params={"filename": "photo.bin", "type": "application/octet-stream", "metadata[album]": "x"},
            headers=ALICE,
        )
        assert signed.status_code == 200, signed.text
        form = signed.json()
        assert form["method"] == "POST"
        assert form["url"].endswith("/")
        assert form["expires"] > 0
        upload_id = form["upload_id"]
        status = (await client.get(f"/api/v1/uploads/{upload_id}", headers=ALICE)).json()
        assert (status["state"], status["protocol"]) == ("receiving", "s3-direct")
        async with httpx.AsyncClient() as s3:
            posted = await s3.post(form["url"], data=form["fields"], files={"file": ("photo.bin", data)})
        assert posted.status_code in (200, 201, 204), posted.text
        status = await settled_status(client, upload_id)  # the read itself finds the object
        assert status["state"] == "ready"
        assert status["length"] == len(data)
        assert status["sha256"] == hashlib.sha256(data).hexdigest()
        assert (await client.get(f"/api/v1/uploads/{upload_id}/content", headers=ALICE)).content == data


@pytest.mark.parametrize("backend", S3_BACKEND)
async def test_another_principals_upload_id_or_key_is_not_found(settings: Settings) -> None:
    settings = direct_settings(settings)
    async with in_process_client(settings) as client:
        started = await start_multipart(client)
        theirs = {"key": started["key"]}
        for method, path in (
            ("GET", f"/s3/multipart/{started['uploadId']}"),
            ("GET", f"/s3/multipart/{started['uploadId']}/1"),
            ("DELETE", f"/s3/multipart/{started['uploadId']}"),
        ):
            response = await client.request(method, path, params=theirs, headers=BOB)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["error"]
        assert (await complete(client, started, ['"x"'], **BOB)).status_code == 404
        # Alice's own key with another multipart id, and a key that is not an upload's.
        other = await client.get("/s3/multipart/not-the-id", params=theirs, headers=ALICE)
        assert other.status_code == 404
        made_up = await client.get(
            f"/s3/multipart/{started['uploadId']}", params={"key": "../x"}, headers=ALICE
        )
        assert made_up.status_code == 404
        # Still Alice's, untouched.
        listed = await client.get(f"/s3/multipart/{started['uploadId']}", params=theirs, headers=ALICE)
        assert listed.status_code == 200
        assert listed.json() == []


@pytest.mark.parametrize("backend", S3_BACKEND)
async def test_abort_leaves_nothing_in_the_bucket(settings: Settings) -> None:
    settings = direct_settings(settings)
    async with in_process_client(settings) as client:
        started = await start_multipart(client)
        await put_part(client, started, 1, os.urandom(5 * MiB))
        aborted = await client.delete(
            f"/s3/multipart/{started['uploadId']}", params={"key": started["key"]}, headers=ALICE
        )
        assert aborted.status_code == 200
        assert aborted.json() == {}
        status = await client.get(f"/api/v1/uploads/{started['upload_id']}", headers=ALICE)
        assert status.status_code == 404
    assert stored_objects(settings) == []


@pytest.mark.parametrize("backend", S3_BACKEND)
async def test_a_multipart_upload_over_the_limit_is_deleted_at_completion(settings: Settings) -> None:
    settings = direct_settings(settings, max_upload_size=5 * MiB + 1000)
    async with in_process_client(settings) as client:
        started = await start_multipart(client)
        etags = [await put_part(client, started, 1, os.urandom(5 * MiB))]
        etags.append(await put_part(client, started, 2, os.urandom(2000)))
        done = await complete(client, started, etags)
        assert done.status_code == 413, done.text
        assert "5244880" in done.json()["error"]
        status = (await client.get(f"/api/v1/uploads/{started['upload_id']}", headers=ALICE)).json()
        assert status["state"] == "failed"
        assert status["failure_reason"].startswith("upload.too_large")
    assert stored_objects(settings) == []


@pytest.mark.parametrize("backend", S3_BACKEND)
async def test_a_single_request_over_the_limit_is_refused_by_s3_or_deleted(settings: Settings) -> None:
    settings = direct_settings(settings, max_upload_size=100_000)
    async with in_process_client(settings) as client:
        form = (await client.get("/s3/params", params={"filename": "big.bin"}, headers=ALICE)).json()
        async with httpx.AsyncClient() as s3:
            posted = await s3.post(
                form["url"], data=form["fields"], files={"file": ("big.bin", os.urandom(100_001))}
            )
        status = (await client.get(f"/api/v1/uploads/{form['upload_id']}", headers=ALICE)).json()
        if posted.is_success:  # S3 took it despite the policy: deleted at completion
            assert status["state"] == "failed", status
        else:
            assert status["state"] == "receiving", status
    assert stored_objects(settings) == []


@pytest.mark.parametrize("backend", S3_BACKEND)
async def test_s3_event_notifications_complete_a_single_request_upload(settings: Settings) -> None:
    token = secrets.token_hex(8)
    settings = direct_settings(settings, s3_events_token=SecretStr(token))
    data = b"notified"
    async with in_process_client(settings) as client:
        form = (await client.get("/s3/params", params={"filename": "n.txt"}, headers=ALICE)).json()
        async with httpx.AsyncClient() as s3:
            await s3.post(form["url"], data=form["fields"], files={"file": ("n.txt", data)})
        key = form["fields"]["key"]
        event = {
            "EventName": "s3:ObjectCreated:Post",
            "Key": f"{S3_TEST_BUCKET}/{key}",
            "Records": [
                {
                    "eventName": "s3:ObjectCreated:Post",
                    "s3": {"bucket": {"name": S3_TEST_BUCKET}, "object": {"key": key, "size": len(data)}},
                }
            ],
        }
        refused = await client.post("/s3/events", json=event, headers={"Authorization": "Bearer wrong"})
        assert refused.status_code == 401
        accepted = await client.post("/s3/events", json=event, headers={"Authorization": f"Bearer {token}"})
        assert accepted.status_code == 204, accepted.text
        # Completed by the notification itself, before anything read its status.
        listed = (await client.get("/api/v1/uploads", headers=ALICE)).json()["items"]
        assert [(u["id"], u["state"]) for u in listed if u["id"] == form["upload_id"]] != [
            (form["upload_id"], "receiving")
        ]
        status = await settled_status(client, form["upload_id"])
        assert status["state"] == "ready"
        assert status["length"] == len(data)


@pytest.mark.parametrize("backend", S3_BACKEND)
async def test_pending_single_request_uploads_complete_on_the_schedule(settings: Settings) -> None:
    settings = direct_settings(settings, s3_direct_poll_seconds=0.2)
    async with in_process_client(settings) as client:
        form = (await client.get("/s3/params", params={"filename": "p.txt"}, headers=ALICE)).json()
        async with httpx.AsyncClient() as s3:
            await s3.post(form["url"], data=form["fields"], files={"file": ("p.txt", b"polled")})
        async with asyncio.timeout(10):
            while True:
                listed = (await client.get("/api/v1/uploads", headers=ALICE)).json()["items"]
                if any(u["id"] == form["upload_id"] and u["state"] != "receiving" for u in listed):
                    break
                await asyncio.sleep(0.1)


@pytest.mark.parametrize("backend", S3_BACKEND)
async def test_an_abandoned_multipart_upload_is_aborted_when_it_expires(settings: Settings) -> None:
    settings = direct_settings(settings, upload_ttl_seconds=1)
    async with in_process_client(settings) as client:
        started = await start_multipart(client)
        await put_part(client, started, 1, os.urandom(5 * MiB))
        await asyncio.sleep(1.2)
        service = client.app.state.uploads  # type: ignore[attr-defined]
        assert await service.expire_due() == 1
        status = (await client.get(f"/api/v1/uploads/{started['upload_id']}", headers=ALICE)).json()
        assert status["state"] == "expired"
    assert stored_objects(settings) == []


@pytest.mark.parametrize("backend", S3_BACKEND)
async def test_tus_cannot_write_to_a_direct_upload(settings: Settings) -> None:
    settings = direct_settings(settings)
    async with in_process_client(settings) as client:
        started = await start_multipart(client)
        response = await client.patch(
            f"{settings.tus_path}{started['upload_id']}",
            content=b"x",
            headers={
                **ALICE,
                "Tus-Resumable": "1.0.0",
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
            },
        )
        assert response.status_code == 409
        assert response.json()["code"] == "upload.direct"


@pytest.mark.parametrize("backend", [("sqlite", "local")])
async def test_direct_uploads_need_s3(settings: Settings) -> None:
    async with in_process_client(settings) as client:
        response = await client.get("/s3/params", params={"filename": "a"})
        assert response.status_code == 404
        assert response.json()["code"] == "direct.needs_s3"
        assert "S3" in response.json()["error"]
        assert (await client.post("/s3/multipart", json={"filename": "a"})).status_code == 404


@pytest.mark.parametrize("backend", S3_BACKEND)
async def test_a_token_s_limits_hold_for_direct_uploads(settings: Settings) -> None:
    import base64
    import json

    from tests.auth.tokens import SECRET, bearer, hs256

    settings = direct_settings(settings, jwt_secret=SecretStr(SECRET))
    limited = bearer(hs256("tia", scope="upload read", uploader={"max_size": 100_000}))
    async with in_process_client(settings) as client:
        signed = await client.get("/s3/params", params={"filename": "a.bin"}, headers=limited)
        assert signed.status_code == 200, signed.text
        policy = json.loads(base64.b64decode(signed.json()["fields"]["policy"]))
        assert ["content-length-range", 0, 100_000] in policy["conditions"]
        # More than the token allows, in parts: refused at completion, and deleted.
        started = (await client.post("/s3/multipart", json={"filename": "b.bin"}, headers=limited)).json()
        query = {"key": started["key"]}
        url = (
            await client.get(f"/s3/multipart/{started['uploadId']}/1", params=query, headers=limited)
        ).json()
        async with httpx.AsyncClient() as s3:
            etag = (await s3.put(url["url"], content=os.urandom(5 * MiB))).headers["etag"]
        done = await client.post(
            f"/s3/multipart/{started['uploadId']}/complete",
            params=query,
            json={"parts": [{"PartNumber": 1, "ETag": etag}]},
            headers=limited,
        )
        assert done.status_code == 413, done.text
        assert "100000 are allowed" in done.json()["error"]
        # Without the upload scope, nothing is signed.
        reader = bearer(hs256("tia", scope="read"))
        refused = await client.get("/s3/params", params={"filename": "a.bin"}, headers=reader)
        assert refused.status_code == 403
        assert refused.json()["error"]
        # And with no credential at all on a server that requires them.
        anonymous = await client.post("/s3/multipart", json={"filename": "c.bin"})
        assert anonymous.status_code == 401


@pytest.mark.parametrize("backend", S3_BACKEND)
async def test_quotas_hold_for_direct_uploads(settings: Settings) -> None:
    settings = direct_settings(settings, quota_active_uploads=1)
    async with in_process_client(settings) as client:
        await start_multipart(client)
        refused = await client.get("/s3/params", params={"filename": "second.bin"}, headers=ALICE)
        assert refused.status_code == 403, refused.text
        assert refused.json()["code"] == "quota.exceeded"
        assert refused.json()["error"]
        # Another principal has a quota of its own.
        assert (await client.post("/s3/multipart", json={"filename": "b"}, headers=BOB)).status_code == 200


@pytest.mark.parametrize("backend", S3_BACKEND)
async def test_the_pre_create_hook_is_asked_before_anything_is_signed(settings: Settings) -> None:
    from tests.hooks.conftest import serving_hooks

    with serving_hooks() as hooks:
        hooks.answer("pre-create", body={"reject": {"status": 403, "message": "no videos on Sunday"}})
        settings = direct_settings(settings, hook_url=hooks.url, hook_secret="hook-secret-of-some-length")
        async with in_process_client(settings) as client:
            refused = await client.post("/s3/multipart", json={"filename": "film.mp4"}, headers=ALICE)
            assert refused.status_code == 403, refused.text
            assert refused.json()["code"] == "hook.rejected"
            assert "no videos on Sunday" in refused.json()["error"]
            asked = hooks.asked[-1].document
            assert asked["type"] == "pre-create"
            assert asked["upload"]["protocol"] == "s3-direct"
            assert (await client.get("/api/v1/uploads", headers=ALICE)).json()["items"] == []
    assert stored_objects(settings) == []  # no multipart upload was started


@pytest.mark.parametrize("backend", S3_BACKEND)
async def test_deleting_a_direct_upload_leaves_nothing_in_the_bucket(settings: Settings) -> None:
    settings = direct_settings(settings)
    async with in_process_client(settings) as client:
        receiving = await start_multipart(client)
        await put_part(client, receiving, 1, os.urandom(5 * MiB))
        single = (await client.get("/s3/params", params={"filename": "s.bin"}, headers=ALICE)).json()
        async with httpx.AsyncClient() as s3:
            await s3.post(single["url"], data=single["fields"], files={"file": ("s.bin", b"stored")})
        for upload_id in (receiving["upload_id"], single["upload_id"]):
            deleted = await client.delete(f"/api/v1/uploads/{upload_id}", headers=ALICE)
            assert deleted.status_code == 204, deleted.text
    assert stored_objects(settings) == []


@pytest.mark.parametrize("backend", S3_BACKEND)
async def test_the_quota_s_room_bounds_a_direct_upload(settings: Settings) -> None:
    import base64
    import json

    settings = direct_settings(settings, quota_bytes=5 * MiB + 500)
    async with in_process_client(settings) as client:
        form = (await client.get("/s3/params", params={"filename": "a.bin"}, headers=ALICE)).json()
        policy = json.loads(base64.b64decode(form["fields"]["policy"]))
        assert ["content-length-range", 0, 5 * MiB + 500] in policy["conditions"]
        # In parts, past the room that is left: refused at completion, and deleted.
        started = await start_multipart(client)
        etags = [await put_part(client, started, 1, os.urandom(5 * MiB))]
        etags.append(await put_part(client, started, 2, os.urandom(1000)))
        done = await complete(client, started, etags)
        assert done.status_code == 413, done.text
        assert "5243380 are allowed" in done.json()["error"]
