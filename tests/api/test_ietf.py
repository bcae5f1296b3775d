"""Resumable Uploads for HTTP (the IETF draft, interop versions 6 and 8) on ``/files/``."""

from __future__ import annotations

import os

import httpx
import pytest

from tests.support import stored_objects
from uploader.settings import Settings

PARTIAL = "application/partial-upload"
IANA = "https://iana.org/assignments/http-problem-types#"


def draft(version: str = "8", **headers: str) -> dict[str, str]:
    return {"Upload-Draft-Interop-Version": version, **{k.replace("_", "-"): v for k, v in headers.items()}}


async def create_incomplete(client: httpx.AsyncClient, version: str = "8", **headers: str) -> str:
    response = await client.post("/files/", headers=draft(version, Upload_Complete="?0", **headers))
    assert response.status_code == 201, response.text
    assert response.headers["Upload-Complete"] == "?0"
    return str(response.headers["Location"]).removeprefix("http://testserver")


async def append(
    client: httpx.AsyncClient, path: str, offset: int, data: bytes, complete: bool
) -> httpx.Response:
    return await client.patch(
        path,
        content=data,
        headers=draft(
            Upload_Offset=str(offset), Upload_Complete="?1" if complete else "?0", Content_Type=PARTIAL
        ),
    )


@pytest.mark.parametrize("version", ["6", "8"])
async def test_single_request_upload(app_client: httpx.AsyncClient, version: str) -> None:
    data = os.urandom(300_000)
    response = await app_client.post(
        "/files/",
        content=data,
        headers={
            **draft(version, Upload_Complete="?1"),
            "Content-Type": "text/csv",
            "Content-Disposition": "inline; filename=\"r.csv\"; filename*=UTF-8''r%C3%A9sum%C3%A9.csv",
        },
    )
    assert response.status_code == 201, response.text
    assert response.headers["Upload-Complete"] == "?1"
    assert response.headers["Upload-Draft-Interop-Version"] == version
    assert response.headers["Location"].startswith("http://testserver/files/")
    status = response.json()
    assert status["length"] == len(data)
    assert status["filename"] == "résumé.csv"
    assert status["declared_type"] == "text/csv"
    assert (await app_client.get(status["links"]["content"])).content == data


async def test_appends_then_completion(app_client: httpx.AsyncClient) -> None:
    data = os.urandom(700_000)
    path = await create_incomplete(app_client)
    first = await append(app_client, path, 0, data[:250_000], complete=False)
    assert first.status_code == 204
    assert first.headers["Upload-Complete"] == "?0"
    head = await app_client.head(path, headers=draft())
    assert head.status_code == 204
    assert head.headers["Upload-Offset"] == "250000"
    assert head.headers["Upload-Complete"] == "?0"
    assert head.headers["Cache-Control"] == "no-store"
    assert "max-size=" in head.headers["Upload-Limit"]
    assert "Upload-Length" not in head.headers  # not known yet
    last = await append(app_client, path, 250_000, data[250_000:], complete=True)
    assert last.status_code == 200
    assert last.headers["Upload-Complete"] == "?1"
    assert last.json()["length"] == len(data)
    done = await app_client.head(path, headers=draft())
    assert done.headers["Upload-Complete"] == "?1"
    assert done.headers["Upload-Length"] == str(len(data))
    assert (await app_client.get(path)).content == data


async def test_problem_types_of_the_draft(app_client: httpx.AsyncClient) -> None:
    path = await create_incomplete(app_client, Upload_Length="1000")
    await append(app_client, path, 0, b"a" * 400, complete=False)
    mismatch = await append(app_client, path, 100, b"b" * 10, complete=False)
    assert mismatch.status_code == 409
    assert mismatch.headers["Upload-Offset"] == "400"
    problem = mismatch.json()
    assert problem["type"] == IANA + "mismatching-upload-offset"
    assert (problem["expected-offset"], problem["provided-offset"]) == (400, 100)
    inconsistent = await append(app_client, path, 400, b"c" * 10, complete=True)  # would end at 410, not 1000
    assert inconsistent.status_code == 400
    assert inconsistent.json()["type"] == IANA + "inconsistent-upload-length"
    finished = await append(app_client, path, 400, b"d" * 600, complete=True)
    assert finished.status_code == 200
    completed = await append(app_client, path, 1000, b"more", complete=False)
    assert completed.status_code == 400
    assert completed.json()["type"] == IANA + "completed-upload"
    again = await append(app_client, path, 1000, b"", complete=True)  # the same completion, repeated
    assert again.status_code == 200
    assert (await app_client.get(path)).content == b"a" * 400 + b"d" * 600


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({"Upload-Draft-Interop-Version": "5", "Upload-Complete": "?1"}, 400, "ietf.version_unsupported"),
        ({"Upload-Draft-Interop-Version": "8"}, 400, "ietf.header_invalid"),
        ({"Upload-Draft-Interop-Version": "8", "Upload-Complete": "true"}, 400, "ietf.header_invalid"),
        (
            {"Upload-Draft-Interop-Version": "8", "Upload-Complete": "?0", "Upload-Length": "-1"},
            400,
            "ietf.header_invalid",
        ),
        (
            {"Upload-Draft-Interop-Version": "8", "Upload-Complete": "?1", "Upload-Length": "5"},
            400,
            "ietf.inconsistent_length",
        ),
    ],
)
async def test_malformed_creation_is_refused_and_leaves_nothing(
    app_client: httpx.AsyncClient, settings: Settings, headers: dict[str, str], status: int, code: str
) -> None:
    response = await app_client.post("/files/", content=b"0123456789", headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert (await app_client.get("/api/v1/uploads")).json()["items"] == []
    assert stored_objects(settings) == []


async def test_malformed_appends(app_client: httpx.AsyncClient) -> None:
    path = await create_incomplete(app_client)
    wrong_type = await app_client.patch(
        path, content=b"x", headers=draft(Upload_Offset="0", Upload_Complete="?0", Content_Type="text/plain")
    )
    assert wrong_type.status_code == 415
    no_offset = await app_client.patch(
        path, content=b"x", headers=draft(Upload_Complete="?0", Content_Type=PARTIAL)
    )
    assert no_offset.status_code == 400
    bad_offset = await app_client.patch(
        path, content=b"x", headers=draft(Upload_Offset="1e3", Upload_Complete="?0", Content_Type=PARTIAL)
    )
    assert bad_offset.status_code == 400
    no_complete = await app_client.patch(
        path, content=b"x", headers=draft(Upload_Offset="0", Content_Type=PARTIAL)
    )
    assert no_complete.status_code == 400
    head = await app_client.head(path, headers=draft())
    assert head.headers["Upload-Offset"] == "0"  # nothing of the refused requests was kept


async def test_cancellation_and_options(app_client: httpx.AsyncClient, settings: Settings) -> None:
    path = await create_incomplete(app_client)
    await append(app_client, path, 0, b"z" * 5000, complete=False)
    cancelled = await app_client.delete(path, headers=draft())
    assert cancelled.status_code == 204
    assert (await app_client.head(path, headers=draft())).status_code == 404
    assert stored_objects(settings) == []
    options = await app_client.options("/files/", headers=draft())
    assert PARTIAL in options.headers["Accept-Patch"]
    assert options.headers["Upload-Limit"].startswith(f"max-size={settings.max_upload_size}")
