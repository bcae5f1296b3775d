"""Multipart form uploads at ``POST /api/v1/uploads``, on every backend."""

from __future__ import annotations

import hashlib
import os

import httpx
import pytest

from tests.api.helpers import settled_status
from tests.images import jpeg
from tests.support import in_process_client, stored_objects
from uploader.settings import Settings

BOUNDARY = "----uploader-test-boundary"


def raw_form(*parts: bytes, close: bool = True) -> bytes:
    body = b"".join(b"--" + BOUNDARY.encode() + b"\r\n" + part + b"\r\n" for part in parts)
    return body + (b"--" + BOUNDARY.encode() + b"--\r\n" if close else b"")


def file_part(name: str, filename: str, data: bytes, content_type: str = "application/octet-stream") -> bytes:
    return (
        f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode() + data


def field_part(name: str, value: str) -> bytes:
    return f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}'.encode()


async def post_raw(client: httpx.AsyncClient, body: bytes, content_type: str | None = None) -> httpx.Response:
    return await client.post(
        "/api/v1/uploads",
        content=body,
        headers={"Content-Type": content_type or f"multipart/form-data; boundary={BOUNDARY}"},
    )


async def test_two_files_and_fields_become_two_processed_uploads(app_client: httpx.AsyncClient) -> None:
    photo = jpeg(1200, 800)
    notes = os.urandom(700_000)
    response = await app_client.post(
        "/api/v1/uploads",
        data={"album": "Été 2026", "camera": "Acme"},
        files=[
            ("photo", ("beach.jpg", photo, "image/jpeg")),
            ("notes", ("notes.bin", notes, "application/x-raw")),
        ],
    )
    assert response.status_code == 201, response.text
    created = response.json()["uploads"]
    assert [u["filename"] for u in created] == ["beach.jpg", "notes.bin"]
    assert created[0]["metadata"] == {
        "album": "Été 2026",
        "camera": "Acme",
        "filename": "beach.jpg",
        "filetype": "image/jpeg",
    }
    assert created[1]["declared_type"] == "application/x-raw"
    assert [u["length"] for u in created] == [len(photo), len(notes)]
    assert [u["sha256"] for u in created] == [
        hashlib.sha256(photo).hexdigest(),
        hashlib.sha256(notes).hexdigest(),
    ]
    for upload, data in zip(created, (photo, notes), strict=True):
        assert (await app_client.get(upload["links"]["content"])).content == data
    photo_status = await settled_status(app_client, created[0]["id"])
    assert photo_status["state"] == "ready"
    assert len(photo_status["variants"]) == 4  # processed like a tus upload
    listed = (await app_client.get("/api/v1/uploads")).json()["items"]
    assert {u["id"] for u in listed} == {u["id"] for u in created}


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"x", "multipart/form-data", 400, "form.invalid"),  # no boundary
        (b"x", "application/json", 400, "form.invalid"),
        (raw_form(file_part("f", "a.bin", b"abc" * 1000), close=False), None, 400, "form.truncated"),
        (
            b"--" + BOUNDARY.encode() + b'\r\nContent-Disposition: form-data; name="f"; filename="a"\r\n',
            None,
            400,
            "form.truncated",
        ),
        (
            raw_form(b"X-Long: " + b"a" * 20_000 + b"\r\n" + file_part("f", "a.bin", b"abc")),
            None,
            400,
            "form.invalid",
        ),
        (
            raw_form(*[field_part(f"f{i}", "v") for i in range(2000)], file_part("f", "a", b"x")),
            None,
            413,
            "form.too_many_parts",
        ),
        (raw_form(field_part("only", "fields")), None, 400, "form.no_files"),
        (raw_form(b"Content-Type: text/plain\r\n\r\nno disposition"), None, 400, "form.invalid"),
        (b"garbage without any boundary at all", None, 400, "form.invalid"),
    ],
    ids=[
        "no-boundary",
        "not-multipart",
        "truncated-part",
        "cut-in-headers",
        "huge-header",
        "thousands-of-parts",
        "no-files",
        "no-disposition",
        "garbage",
    ],
)
async def test_malformed_forms_are_refused_and_leave_nothing(
    app_client: httpx.AsyncClient,
    settings: Settings,
    body: bytes,
    content_type: str | None,
    status: int,
    code: str,
) -> None:
    # A good file first: what a failed form stored before its fault goes too.
    good = file_part("first", "first.bin", os.urandom(300_000))
    if body.startswith(b"--" + BOUNDARY.encode()) and code != "form.no_files":
        body = b"--" + BOUNDARY.encode() + b"\r\n" + good + b"\r\n" + body
    response = await post_raw(app_client, body, content_type)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert (await app_client.get("/api/v1/uploads")).json()["items"] == []
    assert stored_objects(settings) == []


async def test_a_file_over_the_size_limit_is_refused_mid_stream(settings: Settings) -> None:
    limited = settings.model_copy(update={"max_upload_size": 100_000})
    async with in_process_client(limited) as client:
        response = await client.post(
            "/api/v1/uploads",
            files=[("small", ("s.bin", b"s" * 1000)), ("big", ("b.bin", os.urandom(300_000)))],
        )
        assert response.status_code == 413
        assert response.json()["code"] == "upload.too_large"
        assert (await client.get("/api/v1/uploads")).json()["items"] == []
    assert stored_objects(limited) == []


async def test_names_and_file_names_beyond_latin1_are_kept_as_sent(app_client: httpx.AsyncClient) -> None:
    # Browsers send a part's name and file name as raw UTF-8 in Content-Disposition.
    data = os.urandom(1000)
    body = raw_form(
        file_part("pièce ☃", "résumé \U0001f4c4.txt", data, "text/plain"),
        field_part("\U000f1e8c-album", "Été"),
    )
    response = await post_raw(app_client, body)
    assert response.status_code == 201, response.text
    (created,) = response.json()["uploads"]
    assert created["filename"] == "résumé \U0001f4c4.txt"
    assert created["metadata"]["\U000f1e8c-album"] == "Été"
    assert (await app_client.get(f"/api/v1/uploads/{created['id']}/content")).content == data


async def test_a_form_upload_with_names_a_tus_header_cannot_carry_still_answers_head(
    app_client: httpx.AsyncClient,
) -> None:
    body = raw_form(
        file_part("file", "a.txt", b"abc", "text/plain"),
        field_part("\U000973de key", "x"),
        field_part("album", "Été"),
    )
    response = await post_raw(app_client, body)
    assert response.status_code == 201, response.text
    (created,) = response.json()["uploads"]
    head = await app_client.head(f"/files/{created['id']}", headers={"Tus-Resumable": "1.0.0"})
    assert head.status_code == 200
    # Keys a tus header cannot carry (not ASCII, with spaces) stay in the status document only.
    carried = dict(pair.partition(" ")[::2] for pair in head.headers["upload-metadata"].split(","))
    assert set(carried) == {"album", "filename", "filetype"}
    assert created["metadata"]["\U000973de key"] == "x"
