"""Content-addressed deduplication: a creation that declares the file's SHA-256
(``Repr-Digest``) completes at once when its owner already holds those bytes, sharing
them; on every backend."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os

import httpx

from tests.api.helpers import patch, settled_status, upload_bytes, upload_id
from tests.support import TUS, stored_objects
from uploader.settings import Settings


def repr_digest(data: bytes) -> str:
    return f"sha-256=:{base64.b64encode(hashlib.sha256(data).digest()).decode()}:"


async def declared_creation(
    client: httpx.AsyncClient, data: bytes, digest_of: bytes | None = None
) -> httpx.Response:
    return await client.post(
        "/files/",
        headers={**TUS, "Upload-Length": str(len(data)), "Repr-Digest": repr_digest(digest_of or data)},
    )


async def held(client: httpx.AsyncClient, data: bytes) -> dict[str, object]:
    """An upload of ``data``, ready (so its SHA-256 was computed here)."""
    status = await settled_status(client, upload_id(await upload_bytes(client, data, chunk=len(data))))
    assert status["state"] == "ready", status
    return status


async def test_a_hit_completes_in_one_request_and_shares_the_bytes(
    app_client: httpx.AsyncClient, settings: Settings
) -> None:
    data = os.urandom(150_000)
    first = await held(app_client, data)
    objects = stored_objects(settings)
    created = await declared_creation(app_client, data)
    assert created.status_code == 201, created.text
    assert created.headers["Upload-Offset"] == str(len(data)) == created.headers["Upload-Length"]
    second = upload_id(created.headers["Location"].removeprefix("http://testserver"))
    assert second != first["id"]
    status = (await app_client.get(f"/api/v1/uploads/{second}")).json()
    assert status["state"] == "ready"
    assert status["sha256"] == first["sha256"]
    assert status["detected_type"] == first["detected_type"]
    assert (await app_client.get(f"/api/v1/uploads/{second}/content")).content == data
    assert stored_objects(settings) == objects  # shared, not copied
    # A HEAD says it is complete, as a client resuming would ask.
    head = await app_client.head(f"/files/{second}", headers=TUS)
    assert head.headers["Upload-Offset"] == str(len(data))


async def test_a_miss_uploads_as_usual_and_the_digest_is_checked(app_client: httpx.AsyncClient) -> None:
    data = os.urandom(70_000)
    created = await declared_creation(app_client, data)
    assert created.headers["Upload-Offset"] == "0"
    path = created.headers["Location"].removeprefix("http://testserver")
    assert (await patch(app_client, path, 0, data)).status_code == 204
    status = await settled_status(app_client, upload_id(path))
    assert status["state"] == "ready"
    assert status["sha256"] == hashlib.sha256(data).hexdigest()


async def test_a_wrong_digest_fails_and_links_to_nothing(
    app_client: httpx.AsyncClient, settings: Settings
) -> None:
    claimed, sent = os.urandom(50_000), os.urandom(50_000)
    created = await declared_creation(app_client, sent, digest_of=claimed)
    path = created.headers["Location"].removeprefix("http://testserver")
    assert (await patch(app_client, path, 0, sent)).status_code == 204
    status = await settled_status(app_client, upload_id(path))
    assert status["state"] == "failed"
    assert status["failure_reason"].startswith("upload.digest_mismatch")
    assert (await app_client.get(f"/api/v1/uploads/{upload_id(path)}/content")).status_code in (404, 410)
    # What it sent is not kept (removed just after the failure is recorded).
    async with asyncio.timeout(10):
        while stored_objects(settings):  # noqa: ASYNC110 - storage has no event to wait on
            await asyncio.sleep(0.05)
    # Neither what it claimed nor what it sent is something to link to.
    for data in (claimed, sent):
        again = await declared_creation(app_client, data)
        assert again.headers["Upload-Offset"] == "0"


async def test_terminating_one_of_two_sharing_uploads_leaves_the_other_whole(
    app_client: httpx.AsyncClient, settings: Settings
) -> None:
    data = os.urandom(120_000)
    first = await held(app_client, data)
    second = upload_id((await declared_creation(app_client, data)).headers["Location"])
    assert (await app_client.delete(f"/api/v1/uploads/{first['id']}")).status_code == 204
    assert (await app_client.get(f"/api/v1/uploads/{second}/content")).content == data
    assert stored_objects(settings) != []
    # A third links to the second, which still holds the bytes.
    third = await declared_creation(app_client, data)
    assert third.headers["Upload-Offset"] == str(len(data))
    for survivor in (second, upload_id(third.headers["Location"])):
        assert (await app_client.delete(f"/api/v1/uploads/{survivor}")).status_code == 204
    assert stored_objects(settings) == []  # the last one out removed them


async def test_only_the_owner_s_own_uploads_are_linked(settings: Settings) -> None:
    from tests.support import in_process_client

    data = os.urandom(40_000)
    keys = {"alice-key": "alice", "bob-key": "bob"}
    async with in_process_client(settings.model_copy(update={"api_keys": keys})) as client:
        client.headers["X-API-Key"] = "alice-key"
        await held(client, data)
        client.headers["X-API-Key"] = "bob-key"
        theirs = await declared_creation(client, data)
        assert theirs.status_code == 201
        assert theirs.headers["Upload-Offset"] == "0"  # Bob holds nothing: no link, no hint
        client.headers["X-API-Key"] = "alice-key"
        own = await declared_creation(client, data)
        assert own.headers["Upload-Offset"] == str(len(data))


async def test_the_ietf_draft_and_a_creation_with_upload_also_link(app_client: httpx.AsyncClient) -> None:
    data = os.urandom(30_000)
    await held(app_client, data)
    ietf = await app_client.post(
        "/files/",
        content=data,
        headers={
            "Upload-Draft-Interop-Version": "6",
            "Upload-Complete": "?1",
            "Repr-Digest": repr_digest(data),
        },
    )
    assert ietf.status_code == 201, ietf.text
    assert ietf.headers["Upload-Complete"] == "?1"
    with_upload = await app_client.post(
        "/files/",
        content=data,
        headers={
            **TUS,
            "Upload-Length": str(len(data)),
            "Content-Type": "application/offset+octet-stream",
            "Repr-Digest": repr_digest(data),
        },
    )
    assert with_upload.status_code == 201, with_upload.text
    assert with_upload.headers["Upload-Offset"] == str(len(data))


async def test_a_malformed_digest_is_refused(app_client: httpx.AsyncClient) -> None:
    for value in ("sha-256=abc", "sha-256=:not base64!:", "sha-256=:AAAA:"):
        response = await app_client.post(
            "/files/", headers={**TUS, "Upload-Length": "3", "Repr-Digest": value}
        )
        assert response.status_code == 400, value
        assert response.json()["code"] == "upload.digest_invalid"
    # Another algorithm alone is no declaration: an ordinary creation.
    other = await app_client.post(
        "/files/", headers={**TUS, "Upload-Length": "3", "Repr-Digest": "sha-512=:AAAA:"}
    )
    assert other.status_code == 201


async def test_dedup_off_never_links(settings: Settings) -> None:
    from tests.support import in_process_client

    data = os.urandom(20_000)
    async with in_process_client(settings.model_copy(update={"dedup": "off"})) as client:
        await held(client, data)
        created = await declared_creation(client, data)
        assert created.headers["Upload-Offset"] == "0"
