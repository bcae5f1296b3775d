"""Status JSON, listing with cursors, downloads with Range/ETag, ownership, CORS, health."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.api.helpers import create, head, patch, upload_bytes, upload_id
from tests.support import TUS, in_process_client, metadata
from uploader.settings import Settings
from uploader.storage.s3 import S3Store


async def wait_for_state(client: httpx.AsyncClient, uid: str, state: str) -> dict[str, object]:
    for _ in range(200):
        status: dict[str, object] = (await client.get(f"/api/v1/uploads/{uid}")).json()
        if status["state"] == state:
            return status
        await asyncio.sleep(0.02)
    raise AssertionError(f"upload {uid} never reached {state}: {status}")


async def test_status_reports_progress_metadata_and_sha256(app_client: httpx.AsyncClient) -> None:
    data = os.urandom(4000)
    meta = metadata(filename="photo été.jpg", filetype="image/jpeg")
    path = await create(app_client, len(data), **{"Upload-Metadata": meta})
    uid = upload_id(path)
    created = (await app_client.get(f"/api/v1/uploads/{uid}")).json()
    assert created["state"] == "created"
    assert created["offset"] == 0
    assert created["length"] == 4000
    assert created["filename"] == "photo été.jpg"
    assert created["declared_type"] == "image/jpeg"
    assert created["metadata"] == {"filename": "photo été.jpg", "filetype": "image/jpeg"}
    assert created["expires_at"] is not None
    assert created["links"] == {
        "self": f"/api/v1/uploads/{uid}",
        "content": f"/api/v1/uploads/{uid}/content",
        "events": f"/api/v1/uploads/{uid}/events",
        "reprocess": f"/api/v1/uploads/{uid}/reprocess",
        "tus": f"/files/{uid}",
    }
    await patch(app_client, path, 0, data[:1000])
    receiving = (await app_client.get(f"/api/v1/uploads/{uid}")).json()
    assert receiving["state"] == "receiving"
    assert receiving["progress"] == 0.25
    await patch(app_client, path, 1000, data[1000:])
    ready = await wait_for_state(app_client, uid, "ready")
    assert ready["sha256"] == hashlib.sha256(data).hexdigest()
    assert ready["completed_at"] is not None
    assert ready["expires_at"] is None


async def test_listing_pages_newest_first_with_cursor(app_client: httpx.AsyncClient) -> None:
    ids = [upload_id(await create(app_client, 1)) for _ in range(5)]
    seen: list[str] = []
    cursor = None
    for _ in range(3):
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await app_client.get("/api/v1/uploads", params=params)).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    bad = await app_client.get("/api/v1/uploads", params={"cursor": "!!!"})
    assert bad.status_code == 400
    assert bad.json()["code"] == "pagination.cursor_invalid"


async def test_range_etag_and_conditional_downloads(app_client: httpx.AsyncClient) -> None:
    data = bytes(range(256)) * 40
    path = await upload_bytes(
        app_client, data, chunk=4000, **{"Upload-Metadata": metadata(filename='na"me €.txt')}
    )
    url = f"/api/v1/uploads/{upload_id(path)}/content"
    full = await app_client.get(url)
    assert full.status_code == 200
    assert full.content == data
    assert full.headers["X-Content-Type-Options"] == "nosniff"
    assert full.headers["Accept-Ranges"] == "bytes"
    assert full.headers["Content-Disposition"] == (
        "attachment; filename=\"na_me _.txt\"; filename*=UTF-8''na%22me%20%E2%82%AC.txt"
    )
    etag = full.headers["ETag"]
    part = await app_client.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.content == data[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    suffix = await app_client.get(url, headers={"Range": "bytes=-10"})
    assert suffix.content == data[-10:]
    open_ended = await app_client.get(url, headers={"Range": f"bytes={len(data) - 5}-"})
    assert open_ended.content == data[-5:]
    unsatisfiable = await app_client.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["Content-Range"] == f"bytes */{len(data)}"
    ignored = await app_client.get(url, headers={"Range": "bytes=0-1,5-6"})
    assert ignored.status_code == 200
    assert ignored.content == data
    not_modified = await app_client.get(url, headers={"If-None-Match": etag})
    assert not_modified.status_code == 304
    assert not_modified.content == b""
    stale_if_range = await app_client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert stale_if_range.status_code == 200
    head_only = await app_client.head(url)
    assert head_only.headers["Content-Length"] == str(len(data))


async def test_incomplete_upload_cannot_be_downloaded(app_client: httpx.AsyncClient) -> None:
    path = await create(app_client, 10)
    await patch(app_client, path, 0, b"12345")
    response = await app_client.get(f"/api/v1/uploads/{upload_id(path)}/content")
    assert response.status_code == 409
    assert response.json()["code"] == "upload.incomplete"


@pytest.fixture
async def keyed_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    keyed = settings.model_copy(update={"api_keys": {"alice-key": "alice", "bob-key": "bob"}})
    async with in_process_client(keyed) as client:
        yield client


async def test_a_principal_never_sees_or_touches_anothers_uploads(keyed_client: httpx.AsyncClient) -> None:
    alice = {"Authorization": "Bearer alice-key"}
    bob = {"X-Api-Key": "bob-key"}
    response = await keyed_client.post("/files/", headers={**TUS, **alice, "Upload-Length": "3"})
    assert response.status_code == 201
    path = response.headers["Location"].removeprefix("http://testserver")
    uid = upload_id(path)
    assert (await keyed_client.head(path, headers={**TUS, **alice})).status_code == 200
    assert (await keyed_client.head(path, headers={**TUS, **bob})).status_code == 404
    bob_patch = await patch(keyed_client, path, 0, b"abc", **bob)
    assert bob_patch.status_code == 404
    assert (await keyed_client.delete(path, headers={**TUS, **bob})).status_code == 404
    assert (await keyed_client.get(f"/api/v1/uploads/{uid}", headers=bob)).status_code == 404
    assert (await keyed_client.get("/api/v1/uploads", headers=bob)).json()["items"] == []
    assert [i["id"] for i in (await keyed_client.get("/api/v1/uploads", headers=alice)).json()["items"]] == [
        uid
    ]
    assert (await patch(keyed_client, path, 0, b"abc", **alice)).status_code == 204
    bob_final = await keyed_client.post("/files/", headers={**TUS, **bob, "Upload-Concat": f"final;{path}"})
    assert bob_final.status_code == 400
    anonymous = await keyed_client.get("/api/v1/uploads")
    assert anonymous.status_code == 401
    assert anonymous.json()["code"] == "auth.unauthorized"
    wrong = await keyed_client.head(path, headers={**TUS, "Authorization": "Bearer nope"})
    assert wrong.status_code == 401


async def test_cors_preflight_and_exposed_headers_for_widgets(app_client: httpx.AsyncClient) -> None:
    preflight = await app_client.options(
        "/files/",
        headers={
            "Origin": "http://widget.example",
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "tus-resumable,upload-offset,upload-metadata,content-type",
        },
    )
    assert preflight.status_code == 200
    assert "PATCH" in preflight.headers["Access-Control-Allow-Methods"]
    allowed = preflight.headers["Access-Control-Allow-Headers"].lower()
    for name in ("tus-resumable", "upload-offset", "upload-metadata", "upload-concat", "upload-checksum"):
        assert name in allowed
    response = await app_client.post(
        "/files/", headers={**TUS, "Upload-Length": "1", "Origin": "http://widget.example"}
    )
    exposed = response.headers["Access-Control-Expose-Headers"].lower()
    for name in ("location", "upload-offset", "upload-length", "tus-resumable", "upload-expires"):
        assert name in exposed


async def test_cors_origins_are_configurable(settings: Settings) -> None:
    async with in_process_client(
        settings.model_copy(update={"cors_origins": ["http://good.example"]})
    ) as client:
        good = await client.options(
            "/files/", headers={"Origin": "http://good.example", "Access-Control-Request-Method": "POST"}
        )
        bad = await client.options(
            "/files/", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
        )
    assert good.headers["Access-Control-Allow-Origin"] == "http://good.example"
    assert bad.status_code == 400


async def test_health_and_readiness(app_client: httpx.AsyncClient) -> None:
    assert (await app_client.get("/healthz")).json() == {"status": "ok"}
    ready = await app_client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "storage": "ok"}
    store = app_client.app.state.uploads.store  # type: ignore[attr-defined]
    if isinstance(store, S3Store):
        real_bucket, store.bucket = store.bucket, "no-such-bucket"
        try:
            broken = await app_client.get("/readyz")
        finally:
            store.bucket = real_bucket
    else:
        store.root.rename(store.root.with_name("moved-away"))
        try:
            broken = await app_client.get("/readyz")
        finally:
            store.root.with_name("moved-away").rename(store.root)
    assert broken.status_code == 503
    assert broken.json()["checks"]["storage"].startswith("error")


async def test_openapi_docs_are_served(app_client: httpx.AsyncClient) -> None:
    assert (await app_client.get("/docs")).status_code == 200
    spec = (await app_client.get("/openapi.json")).json()
    assert "/api/v1/uploads/{upload_id}" in spec["paths"]


async def test_head_shows_offset_after_partial_patch(app_client: httpx.AsyncClient) -> None:
    path = await create(app_client, 10)
    await patch(app_client, path, 0, b"123")
    assert (await head(app_client, path)).headers["Upload-Offset"] == "3"


async def test_sha256_is_known_the_moment_the_last_chunk_lands(app_client: httpx.AsyncClient) -> None:
    """Computed while the bytes arrive, across PATCHes, not by reading the file again."""
    data = os.urandom(3 * 1024 * 1024 + 17)
    path = await create(app_client, len(data))
    for start in range(0, len(data), 1024 * 1024):
        await patch(app_client, path, start, data[start : start + 1024 * 1024])
    # The completing transaction itself carries the digest.
    upload = await app_client.app.state.uploads.get("anonymous", upload_id(path))  # type: ignore[attr-defined]
    assert upload.sha256 == hashlib.sha256(data).hexdigest()


async def test_past_the_inline_digest_size_processing_computes_sha256(settings: Settings) -> None:
    data = os.urandom(100_000)
    async with in_process_client(settings.model_copy(update={"inline_digest_max_bytes": 99_999})) as client:
        path = await upload_bytes(client, data, chunk=30_000)
        ready = await wait_for_state(client, upload_id(path), "ready")
        assert ready["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("backend", ["postgres+s3"], indirect=True)
async def test_downloads_can_redirect_to_presigned_s3_urls(settings: Settings) -> None:
    """An S3 capability: only the S3 backend is asked."""
    data = os.urandom(20_000)
    async with in_process_client(settings.model_copy(update={"s3_presigned_downloads": True})) as client:
        path = await upload_bytes(client, data, **{"Upload-Metadata": metadata(filename="é.bin")})
        response = await client.get(f"/api/v1/uploads/{upload_id(path)}/content")
    assert response.status_code == 307
    async with httpx.AsyncClient() as direct_client:
        direct = await direct_client.get(response.headers["Location"])
        ranged = await direct_client.get(response.headers["Location"], headers={"Range": "bytes=10-19"})
    assert direct.status_code == 200
    assert direct.content == data
    assert "filename*=UTF-8''%C3%A9.bin" in direct.headers["Content-Disposition"]
    assert ranged.status_code == 206
    assert ranged.content == data[10:20]
