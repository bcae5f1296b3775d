"""tus checksum, concatenation and expiration extensions."""

from __future__ import annotations

import base64
import hashlib
import secrets
import zlib
from datetime import timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import pytest

from tests.api.helpers import create, head, offset_of, patch, upload_bytes, upload_id
from tests.support import S3_TEST_BUCKET, TUS, in_process_client, s3_client, stored_objects
from uploader.db.models import utcnow
from uploader.settings import Settings
from uploader.uploads import repository


def checksum(algorithm: str, data: bytes) -> str:
    return f"{algorithm} {base64.b64encode(hashlib.new(algorithm, data).digest()).decode()}"


@pytest.mark.parametrize("algorithm", ["sha1", "md5", "sha256", "sha512"])
async def test_matching_checksum_is_accepted(app_client: httpx.AsyncClient, algorithm: str) -> None:
    path = await create(app_client, 8)
    response = await patch(app_client, path, 0, b"abcd", **{"Upload-Checksum": checksum(algorithm, b"abcd")})
    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "4"


async def test_checksum_mismatch_keeps_nothing_of_the_request(app_client: httpx.AsyncClient) -> None:
    path = await create(app_client, 8)
    assert (await patch(app_client, path, 0, b"abcd")).status_code == 204
    bad = await patch(app_client, path, 4, b"efgh", **{"Upload-Checksum": checksum("sha1", b"XXXX")})
    assert bad.status_code == 460
    assert bad.json()["code"] == "tus.checksum_mismatch"
    assert await offset_of(app_client, path) == 4
    good = await patch(app_client, path, 4, b"efgh", **{"Upload-Checksum": checksum("sha1", b"efgh")})
    assert good.status_code == 204
    assert (await app_client.get(path)).content == b"abcdefgh"


async def test_checksum_mismatch_on_creation_with_upload_creates_nothing(
    app_client: httpx.AsyncClient,
) -> None:
    response = await app_client.post(
        "/files/",
        content=b"abcd",
        headers={
            **TUS,
            "Content-Type": "application/offset+octet-stream",
            "Upload-Length": "4",
            "Upload-Checksum": checksum("md5", b"other"),
        },
    )
    assert response.status_code == 460
    listing = (await app_client.get("/api/v1/uploads")).json()
    assert [item for item in listing["items"] if item["state"] != "terminated"] == []


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("crc32 AAAAAA==", "tus.checksum_algorithm"),
        ("sha1 not-base64!!", "tus.header_invalid"),
        ("sha1 " + base64.b64encode(b"short").decode(), "tus.header_invalid"),
        ("sha1", "tus.header_invalid"),
    ],
)
async def test_malformed_checksum_headers_get_400(
    app_client: httpx.AsyncClient, value: str, code: str
) -> None:
    path = await create(app_client, 4)
    response = await patch(app_client, path, 0, b"abcd", **{"Upload-Checksum": value})
    assert response.status_code == 400
    assert response.json()["code"] == code
    assert await offset_of(app_client, path) == 0


async def test_concatenation_of_finished_partial_uploads(app_client: httpx.AsyncClient) -> None:
    first = await upload_bytes(app_client, b"hello ", **{"Upload-Concat": "partial"})
    second = await upload_bytes(app_client, b"world", **{"Upload-Concat": "partial"})
    assert (await head(app_client, first)).headers["Upload-Concat"] == "partial"
    response = await app_client.post(
        "/files/", headers={**TUS, "Upload-Concat": f"final;{first} http://testserver{second}"}
    )
    assert response.status_code == 201
    final = response.headers["Location"].removeprefix("http://testserver")
    final_head = await head(app_client, final)
    assert final_head.headers["Upload-Concat"] == f"final;{first} {second}"
    assert final_head.headers["Upload-Offset"] == "11"
    assert final_head.headers["Upload-Length"] == "11"
    assert (await app_client.get(final)).content == b"hello world"
    refused = await patch(app_client, final, 11, b"!")
    assert refused.status_code == 403
    assert refused.json()["code"] == "upload.final_immutable"
    listing = (await app_client.get("/api/v1/uploads")).json()["items"]
    assert [item["id"] for item in listing] == [upload_id(final)]


async def test_concatenation_unfinished_completes_when_parts_finish(app_client: httpx.AsyncClient) -> None:
    first = await create(app_client, 3, **{"Upload-Concat": "partial"})
    second = await create(app_client, 3, **{"Upload-Concat": "partial"})
    response = await app_client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{first} {second}"})
    assert response.status_code == 201
    final = response.headers["Location"].removeprefix("http://testserver")
    waiting = await head(app_client, final)
    assert "Upload-Offset" not in waiting.headers
    assert waiting.headers["Upload-Length"] == "6"
    assert (await patch(app_client, second, 0, b"def")).status_code == 204
    assert (await patch(app_client, first, 0, b"abc")).status_code == 204
    done = await head(app_client, final)
    assert done.headers["Upload-Offset"] == "6"
    assert (await app_client.get(final)).content == b"abcdef"


@pytest.mark.parametrize(
    "concat",
    [
        "final;",
        "final;/files/0123456789abcdef0123456789abcdef",
        "final;/elsewhere/0123456789abcdef0123456789abcdef",
        "final;not a url",
        "partial;x",
        "whole",
    ],
)
async def test_bad_concatenation_requests_get_400(app_client: httpx.AsyncClient, concat: str) -> None:
    response = await app_client.post(
        "/files/", headers={**TUS, "Upload-Concat": concat, "Upload-Length": "1"}
    )
    assert response.status_code == 400
    assert response.json()["code"] == "tus.concat_invalid"


async def test_final_cannot_include_a_regular_upload(app_client: httpx.AsyncClient) -> None:
    regular = await upload_bytes(app_client, b"abc")
    response = await app_client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{regular}"})
    assert response.status_code == 400


async def test_unfinished_uploads_announce_expiry_and_are_removed_after_it(
    app_client: httpx.AsyncClient,
) -> None:
    path = await create(app_client, 10)
    assert (await patch(app_client, path, 0, b"12345")).status_code == 204
    expires = parsedate_to_datetime((await head(app_client, path)).headers["Upload-Expires"])
    assert timedelta(hours=23) < expires - utcnow() <= timedelta(hours=24, seconds=5)
    service = app_client.app.state.uploads  # type: ignore[attr-defined]
    finished = await upload_bytes(app_client, b"done")
    assert "Upload-Expires" not in (await head(app_client, finished)).headers

    service.settings.upload_ttl_seconds = 1
    assert (await patch(app_client, path, 5, b"67")).status_code == 204  # renews the expiry
    upload = await service.get("anonymous", upload_id(path))
    past = utcnow() - timedelta(seconds=1)
    await service.db.run(lambda s: repository.set_fields(s, upload, expires_at=past))
    gone = await head(app_client, path)
    assert gone.status_code == 410
    assert await service.expire_due() == 1
    assert (await head(app_client, path)).status_code == 410
    status = (await app_client.get(f"/api/v1/uploads/{upload_id(path)}")).json()
    assert status["state"] == "expired"
    assert (await app_client.get(finished)).content == b"done"
    # Only the finished upload's bytes remain: no tail, object or multipart upload of the other.
    await app_client.delete(finished, headers=TUS)
    assert stored_objects(service.settings) == []


async def test_cleanup_loop_expires_uploads_in_the_background(app_client: httpx.AsyncClient) -> None:
    import asyncio

    from uploader.app import _cleanup_loop

    service = app_client.app.state.uploads  # type: ignore[attr-defined]
    service.settings.upload_ttl_seconds = 1
    path = await create(app_client, 10)
    loop_task = asyncio.create_task(_cleanup_loop(service, 0.2))
    try:
        for _ in range(50):
            await asyncio.sleep(0.1)
            status = (await app_client.get(f"/api/v1/uploads/{upload_id(path)}")).json()
            if status["state"] == "expired":
                break
        assert status["state"] == "expired"
    finally:
        loop_task.cancel()


async def test_checksum_mismatch_across_several_parts_keeps_nothing(app_client: httpx.AsyncClient) -> None:
    """Bodies spanning whole storage parts (5 MiB on S3) roll back as cleanly as small ones."""
    mib = 1024 * 1024
    data = bytes(range(256)) * (52 * 1024)  # 13 MiB
    path = await create(app_client, len(data))
    assert (await patch(app_client, path, 0, data[: 3 * mib])).status_code == 204
    wrong = await patch(
        app_client, path, 3 * mib, data[3 * mib : 9 * mib], **{"Upload-Checksum": checksum("sha256", b"x")}
    )
    assert wrong.status_code == 460
    assert await offset_of(app_client, path) == 3 * mib
    body = data[3 * mib :]
    good = await patch(app_client, path, 3 * mib, body, **{"Upload-Checksum": checksum("sha256", body)})
    assert good.status_code == 204
    assert (await app_client.get(path)).content == data


async def test_concatenation_of_large_parts(app_client: httpx.AsyncClient) -> None:
    """Parts of 5 MiB and more: S3 concatenates them server-side (UploadPartCopy)."""
    first_data, second_data = b"a" * (5 * 1024 * 1024 + 3), b"b" * 1234
    first = await upload_bytes(app_client, first_data, chunk=len(first_data), **{"Upload-Concat": "partial"})
    second = await upload_bytes(app_client, second_data, chunk=2000, **{"Upload-Concat": "partial"})
    response = await app_client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{first} {second}"})
    assert response.status_code == 201
    final = response.headers["Location"].removeprefix("http://testserver")
    assert (await app_client.get(final)).content == first_data + second_data
    for path in (first, second, final):
        assert (await app_client.delete(path, headers=TUS)).status_code == 204
    assert stored_objects(app_client.app.state.settings) == []  # type: ignore[attr-defined]


async def test_an_upload_expired_before_its_first_write_takes_no_bytes(app_client: httpx.AsyncClient) -> None:
    path = await create(app_client, 10)
    service = app_client.app.state.uploads  # type: ignore[attr-defined]
    upload = await service.get("anonymous", upload_id(path))
    past = utcnow() - timedelta(seconds=1)
    await service.db.run(lambda s: repository.set_fields(s, upload, expires_at=past))
    assert await service.expire_due() == 1
    response = await patch(app_client, path, 0, b"late")
    assert response.status_code == 410
    assert stored_objects(service.settings) == []


async def test_s3_parts_carry_checksums_that_s3_composes(
    s3_endpoint: str, sqlite_url: str, tmp_path: Path
) -> None:
    """Every part is sent with its CRC32 and S3 records the composite: S3 verified each part."""
    prefix = secrets.token_hex(6)
    settings = Settings(
        data_dir=tmp_path,
        database_url=sqlite_url,
        storage_url=f"s3://{S3_TEST_BUCKET}/{prefix}",
        s3_endpoint_url=s3_endpoint,
        s3_part_size=5 * 1024 * 1024,
    )
    mib = 1024 * 1024
    data = bytes(range(256)) * (52 * 1024)  # 13 MiB: two whole parts and a tail
    async with in_process_client(settings) as client:
        path = await create(client, len(data))
        # Three PATCHes that end mid-part, so that tails carry bytes from one to the next.
        for start, end in ((0, 3 * mib), (3 * mib, 7 * mib), (7 * mib, len(data))):
            assert (await patch(client, path, start, data[start:end])).status_code == 204
        upload = await client.app.state.uploads.get("anonymous", upload_id(path))  # type: ignore[attr-defined]
    stored = s3_client(s3_endpoint).head_object(
        Bucket=S3_TEST_BUCKET, Key=f"{prefix}/{upload.storage_key}", ChecksumMode="ENABLED"
    )
    part = 5 * mib
    digests = b"".join(zlib.crc32(data[i : i + part]).to_bytes(4, "big") for i in range(0, len(data), part))
    composite = base64.b64encode(zlib.crc32(digests).to_bytes(4, "big")).decode()
    # S3 appends the part count ("-3"); moto leaves it out.
    assert stored["ChecksumCRC32"].removesuffix("-3") == composite
    assert stored["ContentLength"] == len(data)
