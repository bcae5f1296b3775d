"""The limits an upload token carries, on every protocol (tus, the IETF draft, forms):
size, types (declared at creation, detected after sniffing), files per token, and
metadata forced onto each upload."""

from __future__ import annotations

import base64
from typing import Any

import httpx
from pydantic import SecretStr

from tests.api.helpers import settled_status, upload_bytes, upload_id
from tests.auth.tokens import SECRET, bearer, hs256
from tests.images import png, zip_archive
from tests.support import TUS, in_process_client, metadata, stored_objects
from uploader.settings import Settings

IETF = {"Upload-Draft-Interop-Version": "6"}


def _with(settings: Settings, **changes: Any) -> Settings:
    return settings.model_copy(update={"jwt_secret": SecretStr(SECRET), **changes})


def _refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["code"] == code


async def _tus_create(client: httpx.AsyncClient, token: str, length: int, **meta: str) -> httpx.Response:
    headers = {**TUS, "Upload-Length": str(length), **bearer(token)}
    if meta:
        headers["Upload-Metadata"] = metadata(**meta)
    return await client.post("/files/", headers=headers)


async def _ietf_create(client: httpx.AsyncClient, token: str, data: bytes, media_type: str) -> httpx.Response:
    headers = {**IETF, "Upload-Complete": "?1", "Content-Type": media_type, **bearer(token)}
    return await client.post("/files/", content=data, headers=headers)


async def _form(client: httpx.AsyncClient, token: str, *files: tuple[str, bytes, str]) -> httpx.Response:
    parts = [("file", (name, data, media_type)) for name, data, media_type in files]
    return await client.post("/api/v1/uploads", files=parts, headers=bearer(token))


async def test_max_size_is_enforced_on_every_protocol(settings: Settings) -> None:
    async with in_process_client(_with(settings)) as client:
        token = hs256(uploader={"max_size": 1000})
        assert (await _tus_create(client, token, 1000)).status_code == 201
        _refused(await _tus_create(client, token, 1001), 413, "upload.too_large")
        _refused(await _ietf_create(client, token, b"x" * 1001, "text/plain"), 413, "upload.too_large")
        _refused(await _form(client, token, ("big.txt", b"x" * 1001, "text/plain")), 413, "upload.too_large")
        # A length declared later is held to the token's size too.
        deferred = await client.post("/files/", headers={**TUS, "Upload-Defer-Length": "1", **bearer(token)})
        assert deferred.status_code == 201
        path = deferred.headers["Location"].removeprefix("http://testserver")
        declared = await client.patch(
            path,
            content=b"",
            headers={
                **TUS,
                "Content-Type": "application/offset+octet-stream",
                "Upload-Offset": "0",
                "Upload-Length": "5000",
                **bearer(token),
            },
        )
        _refused(declared, 413, "upload.too_large")
    assert len(stored_objects(settings)) <= 2  # the accepted tus upload and the deferred one


async def test_types_are_enforced_on_the_declared_type_at_creation(settings: Settings) -> None:
    async with in_process_client(_with(settings)) as client:
        token = hs256(uploader={"types": ["image/*", "application/pdf"]})
        assert (
            await _tus_create(client, token, 10, filename="a.png", filetype="image/png")
        ).status_code == 201
        assert (await _tus_create(client, token, 10, filetype="application/pdf")).status_code == 201
        _refused(
            await _tus_create(client, token, 10, filetype="application/zip"), 415, "upload.type_not_allowed"
        )
        _refused(await _tus_create(client, token, 10, filename="no-type"), 415, "upload.type_not_allowed")
        _refused(await _ietf_create(client, token, b"PK", "application/zip"), 415, "upload.type_not_allowed")
        assert (await _ietf_create(client, token, png(8, 8), "image/png")).status_code == 201
        form = await _form(client, token, ("a.zip", zip_archive(), "application/zip"))
        _refused(form, 415, "upload.type_not_allowed")
        accepted = await _form(client, token, ("a.png", png(8, 8), "image/png"))
        assert accepted.status_code == 201, accepted.text


async def test_a_png_token_cannot_smuggle_a_zip(settings: Settings) -> None:
    """Declared image/png, the bytes are a ZIP: sniffed, failed, its bytes deleted, and its
    content gone (410) while its status stays."""
    async with in_process_client(_with(settings)) as client:
        client.headers.update(bearer(hs256(uploader={"types": ["image/png"]})))
        meta = {"Upload-Metadata": metadata(filename="cat.png", filetype="image/png")}
        uid = upload_id(await upload_bytes(client, zip_archive(), **meta))
        status = await settled_status(client, uid)
        assert status["state"] == "failed"
        assert status["failure_reason"].startswith("upload.type_not_allowed")
        assert "application/zip" in status["failure_reason"]
        _refused(await client.get(f"/api/v1/uploads/{uid}/content"), 410, "upload.rejected")
        _refused(await client.get(f"/files/{uid}"), 410, "upload.rejected")
        assert stored_objects(settings) == []
        # A real PNG under the same token is ready.
        good = upload_id(await upload_bytes(client, png(16, 16), **meta))
        assert (await settled_status(client, good))["state"] == "ready"
        assert stored_objects(settings) != []


async def test_max_files_counts_every_protocol_under_the_tokens_jti(settings: Settings) -> None:
    async with in_process_client(_with(settings)) as client:
        token = hs256(jti="batch-42", uploader={"max_files": 3})
        assert (await _tus_create(client, token, 4)).status_code == 201
        assert (await _ietf_create(client, token, b"abcd", "text/plain")).status_code == 201
        assert (await _form(client, token, ("c.txt", b"c", "text/plain"))).status_code == 201
        _refused(await _tus_create(client, token, 4), 403, "token.exhausted")
        before = stored_objects(settings)
        _refused(await _form(client, token, ("d.txt", b"d", "text/plain")), 403, "token.exhausted")
        assert stored_objects(settings) == before  # the refused form's file went again
        # Another token (another jti) of the same subject has its own count.
        other = hs256(jti="batch-43", uploader={"max_files": 1})
        assert (await _tus_create(client, other, 4)).status_code == 201
        listed = await client.get("/api/v1/uploads", headers=bearer(token))
        assert len(listed.json()["items"]) == 4


async def test_forced_metadata_wins_over_what_the_client_sends(settings: Settings) -> None:
    async with in_process_client(_with(settings)) as client:
        token = hs256(uploader={"metadata": {"project": "apollo", "tenant": "t-1"}})
        created = await _tus_create(client, token, 3, filename="x.txt", project="mercury")
        assert created.status_code == 201
        uid = created.headers["Location"].rsplit("/", 1)[-1]
        status = (await client.get(f"/api/v1/uploads/{uid}", headers=bearer(token))).json()
        assert status["metadata"]["project"] == "apollo"
        assert status["metadata"]["tenant"] == "t-1"
        assert status["metadata"]["filename"] == "x.txt"
        form = await _form(client, token, ("y.txt", b"y", "text/plain"))
        assert form.json()["uploads"][0]["metadata"]["project"] == "apollo"
        head = await client.head(f"/files/{uid}", headers={**TUS, **bearer(token)})
        pairs = dict(p.split(" ") for p in head.headers["Upload-Metadata"].split(","))
        assert base64.b64decode(pairs["project"]) == b"apollo"


async def test_parts_of_a_parallel_upload_are_not_files_the_final_upload_is(settings: Settings) -> None:
    """tus-js-client's parallel uploads send their parts without metadata: a token limited
    to some types and files still lets them through, and judges the final upload."""
    async with in_process_client(_with(settings)) as client:
        token = hs256(jti="parallel-1", uploader={"types": ["text/plain"], "max_files": 1})
        parts = []
        for piece in (b"hello ", b"world"):
            created = await client.post(
                "/files/",
                headers={
                    **TUS,
                    "Upload-Length": str(len(piece)),
                    "Upload-Concat": "partial",
                    **bearer(token),
                },
            )
            assert created.status_code == 201, created.text
            path = created.headers["Location"].removeprefix("http://testserver")
            assert (
                await client.patch(
                    path,
                    content=piece,
                    headers={
                        **TUS,
                        "Content-Type": "application/offset+octet-stream",
                        "Upload-Offset": "0",
                        **bearer(token),
                    },
                )
            ).status_code == 204
            parts.append(path)
        final = await client.post(
            "/files/",
            headers={
                **TUS,
                "Upload-Concat": "final;" + " ".join(parts),
                "Upload-Metadata": metadata(filename="greeting.txt", filetype="text/plain"),
                **bearer(token),
            },
        )
        assert final.status_code == 201, final.text
        uid = final.headers["Location"].rsplit("/", 1)[-1]
        content = await client.get(f"/api/v1/uploads/{uid}/content", headers=bearer(token))
        assert content.content == b"hello world"
        # The final upload was the token's one file.
        _refused(await _tus_create(client, token, 3, filetype="text/plain"), 403, "token.exhausted")
        # A final of a type the token does not allow is refused like any upload.
        other = hs256(jti="parallel-2", uploader={"types": ["text/plain"]})
        part = await client.post(
            "/files/", headers={**TUS, "Upload-Length": "1", "Upload-Concat": "partial", **bearer(other)}
        )
        wrong = await client.post(
            "/files/",
            headers={
                **TUS,
                "Upload-Concat": "final;" + part.headers["Location"].removeprefix("http://testserver"),
                "Upload-Metadata": metadata(filetype="application/zip"),
                **bearer(other),
            },
        )
        _refused(wrong, 415, "upload.type_not_allowed")
