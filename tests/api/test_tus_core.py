"""tus core, creation, creation-with-upload and deferred length, on both databases."""

from __future__ import annotations

import os

import httpx

from tests.api.helpers import create, head, offset_of, patch, upload_bytes, upload_id
from tests.support import PATCH_HEADERS, TUS, metadata, stored_objects


async def test_options_announces_version_extensions_and_limits(app_client: httpx.AsyncClient) -> None:
    response = await app_client.options("/files/")
    assert response.status_code == 204
    assert response.headers["Tus-Version"] == "1.0.0"
    extensions = set(response.headers["Tus-Extension"].split(","))
    assert {
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "termination",
        "expiration",
        "checksum",
        "concatenation",
        "concatenation-unfinished",
    } <= extensions
    assert int(response.headers["Tus-Max-Size"]) == 10 * 1024**3
    assert set(response.headers["Tus-Checksum-Algorithm"].split(",")) == {"sha1", "md5", "sha256", "sha512"}


async def test_upload_in_chunks_then_download_identical_bytes(app_client: httpx.AsyncClient) -> None:
    data = os.urandom(10_000)
    path = await create(app_client, len(data), **{"Upload-Metadata": metadata(filename="a.bin")})
    head_response = await head(app_client, path)
    assert head_response.headers["Upload-Offset"] == "0"
    assert head_response.headers["Upload-Length"] == "10000"
    assert head_response.headers["Cache-Control"] == "no-store"
    assert head_response.headers["Upload-Metadata"] == metadata(filename="a.bin")
    for start in range(0, len(data), 3000):
        response = await patch(app_client, path, start, data[start : start + 3000])
        assert response.status_code == 204
        assert response.headers["Upload-Offset"] == str(min(start + 3000, len(data)))
        assert response.headers["Tus-Resumable"] == "1.0.0"
    content = await app_client.get(f"/api/v1/uploads/{upload_id(path)}/content")
    assert content.status_code == 200
    assert content.content == data
    same = await app_client.get(path)
    assert same.content == data


async def test_requests_without_supported_version_get_412(app_client: httpx.AsyncClient) -> None:
    response = await app_client.post("/files/", headers={"Upload-Length": "5"})
    assert response.status_code == 412
    assert response.headers["Tus-Version"] == "1.0.0"
    assert response.json()["code"] == "tus.version_unsupported"
    wrong = await app_client.post("/files/", headers={"Tus-Resumable": "0.2.2", "Upload-Length": "5"})
    assert wrong.status_code == 412


async def test_creation_with_upload_stores_the_first_bytes(app_client: httpx.AsyncClient) -> None:
    response = await app_client.post(
        "/files/",
        content=b"hello",
        headers={**PATCH_HEADERS, "Upload-Length": "11"},
    )
    assert response.status_code == 201
    assert response.headers["Upload-Offset"] == "5"
    path = response.headers["Location"].removeprefix("http://testserver")
    assert (await patch(app_client, path, 5, b" world")).status_code == 204
    assert (await app_client.get(path)).content == b"hello world"


async def test_deferred_length_is_declared_by_a_later_patch(app_client: httpx.AsyncClient) -> None:
    path = await create(app_client, None)
    first = await head(app_client, path)
    assert first.headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in first.headers
    assert (await patch(app_client, path, 0, b"abc")).status_code == 204
    response = await patch(app_client, path, 3, b"def", **{"Upload-Length": "6"})
    assert response.status_code == 204
    after = await head(app_client, path)
    assert after.headers["Upload-Length"] == "6"
    assert "Upload-Defer-Length" not in after.headers
    status = (await app_client.get(f"/api/v1/uploads/{upload_id(path)}")).json()
    assert status["state"] in ("received", "processing", "ready")
    assert (await app_client.get(path)).content == b"abcdef"


async def test_deferred_length_cannot_change_once_set(app_client: httpx.AsyncClient) -> None:
    path = await create(app_client, None)
    assert (await patch(app_client, path, 0, b"ab", **{"Upload-Length": "4"})).status_code == 204
    response = await patch(app_client, path, 2, b"cd", **{"Upload-Length": "9"})
    assert response.status_code == 400
    assert response.json()["code"] == "upload.length_already_set"
    assert await offset_of(app_client, path) == 2


async def test_zero_length_upload_is_complete_at_creation(app_client: httpx.AsyncClient) -> None:
    path = await create(app_client, 0)
    assert await offset_of(app_client, path) == 0
    content = await app_client.get(path)
    assert content.status_code == 200
    assert content.content == b""


async def test_method_override_lets_post_act_as_patch_and_delete(app_client: httpx.AsyncClient) -> None:
    path = await create(app_client, 4)
    response = await app_client.post(
        path,
        content=b"data",
        headers={**PATCH_HEADERS, "Upload-Offset": "0", "X-HTTP-Method-Override": "PATCH"},
    )
    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "4"
    deleted = await app_client.post(path, headers={**TUS, "X-HTTP-Method-Override": "DELETE"})
    assert deleted.status_code == 204
    assert (await head(app_client, path)).status_code == 404


async def test_upload_bigger_than_max_size_is_refused(app_client: httpx.AsyncClient) -> None:
    response = await app_client.post("/files/", headers={**TUS, "Upload-Length": str(10 * 1024**3 + 1)})
    assert response.status_code == 413
    assert response.json()["code"] == "upload.too_large"


async def test_deferred_upload_cannot_grow_past_max_size(app_client: httpx.AsyncClient) -> None:
    app_client.app.state.settings.max_upload_size = 10  # type: ignore[attr-defined]
    path = await create(app_client, None)
    response = await patch(app_client, path, 0, b"x" * 11)
    assert response.status_code == 413
    assert await offset_of(app_client, path) == 0


async def test_termination_removes_the_upload_and_its_bytes(app_client: httpx.AsyncClient) -> None:
    path = await upload_bytes(app_client, b"x" * 5000, chunk=2000)
    settings = app_client.app.state.settings  # type: ignore[attr-defined]
    assert stored_objects(settings) != []
    response = await app_client.delete(path, headers=TUS)
    assert response.status_code == 204
    assert (await head(app_client, path)).status_code == 404
    assert (await patch(app_client, path, 5000, b"")).status_code == 404
    assert (await app_client.delete(path, headers=TUS)).status_code == 404
    assert stored_objects(settings) == []  # no file, object, tail or open multipart upload


async def test_declaring_the_length_at_the_current_offset_completes_and_processes(
    app_client: httpx.AsyncClient,
) -> None:
    import asyncio
    import hashlib

    path = await create(app_client, None)
    assert (await patch(app_client, path, 0, b"abcdef")).status_code == 204
    response = await patch(app_client, path, 6, b"", **{"Upload-Length": "6"})
    assert response.status_code == 204
    for _ in range(100):
        status = (await app_client.get(f"/api/v1/uploads/{upload_id(path)}")).json()
        if status["state"] == "ready":
            break
        await asyncio.sleep(0.02)
    assert status["state"] == "ready"
    assert status["sha256"] == hashlib.sha256(b"abcdef").hexdigest()
