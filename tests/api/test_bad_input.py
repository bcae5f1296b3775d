"""Hostile and malformed input: a 4xx with a stable code, the upload untouched."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.api.helpers import create, head, offset_of, patch, upload_bytes
from tests.support import PATCH_HEADERS, TUS

BAD_NUMBERS = ["-1", "abc", "1e3", "0x10", "99999999999999999999999", "12 x", "", "+5", "\u0661"]


@pytest.mark.parametrize("value", BAD_NUMBERS)
async def test_bad_upload_length_is_refused(app_client: httpx.AsyncClient, value: str) -> None:
    response = await app_client.post("/files/", headers=[*TUS.items(), ("Upload-Length", value.encode())])
    assert response.status_code == 400
    assert response.json()["code"] == "tus.header_invalid"


@pytest.mark.parametrize("value", BAD_NUMBERS)
async def test_bad_upload_offset_leaves_upload_unchanged(app_client: httpx.AsyncClient, value: str) -> None:
    path = await create(app_client, 10)
    await patch(app_client, path, 0, b"abc")
    response = await app_client.patch(
        path, content=b"def", headers=[*PATCH_HEADERS.items(), ("Upload-Offset", value.encode())]
    )
    assert response.status_code == 400
    assert await offset_of(app_client, path) == 3


async def test_missing_offset_and_length_headers(app_client: httpx.AsyncClient) -> None:
    path = await create(app_client, 10)
    no_offset = await app_client.patch(path, content=b"abc", headers=PATCH_HEADERS)
    assert no_offset.status_code == 400
    no_length = await app_client.post("/files/", headers=TUS)
    assert no_length.status_code == 400
    assert no_length.json()["code"] == "upload.length_required"


@pytest.mark.parametrize(
    "headers",
    [
        {"Upload-Defer-Length": "0"},
        {"Upload-Defer-Length": "2"},
        {"Upload-Defer-Length": "1", "Upload-Length": "5"},
    ],
)
async def test_bad_defer_length_combinations(app_client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    response = await app_client.post("/files/", headers={**TUS, **headers})
    assert response.status_code == 400
    assert response.json()["code"] == "tus.header_invalid"


@pytest.mark.parametrize(
    "value",
    [
        "filename not*base64",
        "filename YQ== extra",
        "filename YQ==,filename Yg==",
        ",",
        "filename YQ==,",
        "a  YQ==",
        "fïlename YQ==",
        "a YQ==," * 3000,
    ],
)
async def test_broken_metadata_is_refused(app_client: httpx.AsyncClient, value: str) -> None:
    response = await app_client.post(
        "/files/", headers=[*TUS.items(), ("Upload-Length", "1"), ("Upload-Metadata", value.encode())]
    )
    assert response.status_code == 400
    assert response.json()["code"] == "tus.metadata_invalid"


async def test_metadata_key_without_value_is_kept(app_client: httpx.AsyncClient) -> None:
    path = await create(app_client, 1, **{"Upload-Metadata": "is_confidential,filename YS50eHQ="})
    assert (await head(app_client, path)).headers["Upload-Metadata"] == "is_confidential,filename YS50eHQ="


async def test_wrong_offset_gets_409_with_the_real_offset(app_client: httpx.AsyncClient) -> None:
    path = await create(app_client, 10)
    await patch(app_client, path, 0, b"abc")
    for wrong in (0, 2, 4, 10):
        response = await patch(app_client, path, wrong, b"x")
        assert response.status_code == 409
        assert response.json()["code"] == "upload.offset_mismatch"
        assert response.headers["Upload-Offset"] == "3"
    assert await offset_of(app_client, path) == 3


@pytest.mark.parametrize(
    "path",
    [
        "/files/0123456789abcdef0123456789abcdef",
        "/files/nothing",
        "/files/..%2F..%2Fetc%2Fpasswd",
        "/files/ABCDEF",
    ],
)
async def test_unknown_ids_get_404(app_client: httpx.AsyncClient, path: str) -> None:
    assert (await app_client.head(path, headers=TUS)).status_code == 404
    response = await app_client.patch(path, content=b"x", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert response.status_code == 404
    assert response.json()["code"] in ("upload.not_found", "request.not_found")
    assert (await app_client.delete(path, headers=TUS)).status_code == 404
    assert (await app_client.get(path)).status_code == 404


async def test_patch_after_completion_is_refused_and_bytes_stay(app_client: httpx.AsyncClient) -> None:
    path = await upload_bytes(app_client, b"complete")
    more = await patch(app_client, path, 8, b"more")
    assert more.status_code == 413
    assert more.json()["code"] == "upload.exceeds_length"
    empty = await patch(app_client, path, 8, b"")
    assert empty.status_code == 204
    assert (await app_client.get(path)).content == b"complete"


async def test_patch_after_termination_is_404(app_client: httpx.AsyncClient) -> None:
    path = await create(app_client, 5)
    await app_client.delete(path, headers=TUS)
    assert (await patch(app_client, path, 0, b"abc")).status_code == 404


async def test_body_longer_than_declared_is_refused_up_front(app_client: httpx.AsyncClient) -> None:
    path = await create(app_client, 6)
    await patch(app_client, path, 0, b"abc")
    response = await patch(app_client, path, 3, b"defghij")
    assert response.status_code == 413
    assert await offset_of(app_client, path) == 3
    assert (await patch(app_client, path, 3, b"def")).status_code == 204
    assert (await app_client.get(path)).content == b"abcdef"


async def test_chunked_body_longer_than_declared_keeps_nothing_of_it(app_client: httpx.AsyncClient) -> None:
    path = await create(app_client, 6)
    await patch(app_client, path, 0, b"abc")

    async def too_long() -> AsyncIterator[bytes]:
        yield b"de"
        yield b"fgh"

    response = await app_client.patch(
        path, content=too_long(), headers={**PATCH_HEADERS, "Upload-Offset": "3"}
    )
    assert response.status_code == 413
    assert await offset_of(app_client, path) == 3
    assert (await patch(app_client, path, 3, b"def")).status_code == 204
    assert (await app_client.get(path)).content == b"abcdef"


@pytest.mark.parametrize(
    "content_type", [None, "application/octet-stream", "text/plain", "multipart/form-data"]
)
async def test_patch_with_wrong_content_type_gets_415(
    app_client: httpx.AsyncClient, content_type: str | None
) -> None:
    path = await create(app_client, 3)
    headers = {**TUS, "Upload-Offset": "0", **({"Content-Type": content_type} if content_type else {})}
    response = await app_client.patch(path, content=b"abc", headers=headers)
    assert response.status_code == 415
    assert await offset_of(app_client, path) == 0


async def test_unknown_method_override_is_ignored(app_client: httpx.AsyncClient) -> None:
    response = await app_client.post(
        "/files/", headers={**TUS, "Upload-Length": "1", "X-HTTP-Method-Override": "TRACE\x00"}
    )
    assert response.status_code == 201


async def test_bad_query_parameters_get_400_not_422_or_500(app_client: httpx.AsyncClient) -> None:
    for params in ({"limit": "0"}, {"limit": "x"}, {"limit": "100000"}, {"cursor": "x" * 500}):
        response = await app_client.get("/api/v1/uploads", params=params)
        assert response.status_code == 400, params
        assert response.json()["code"] == "request.invalid"


async def test_unknown_routes_and_methods_are_problem_details(app_client: httpx.AsyncClient) -> None:
    missing = await app_client.get("/nope")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["code"] == "request.not_found"
    wrong_method = await app_client.put("/files/", headers=TUS)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["code"] == "request.method_not_allowed"
