"""S3 failures seen through the API: a clear 503, a consistent offset, readiness that says so."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import httpx
import pytest

from tests.support import PATCH_HEADERS, S3_TEST_BUCKET, S3_TEST_ENV, TUS, start_moto_server, start_server

pytestmark = pytest.mark.e2e
MiB = 1024 * 1024


def test_s3_going_away_mid_upload_gives_503_and_a_consistent_offset(tmp_path: Path) -> None:
    moto = start_moto_server()  # this test's own S3 endpoint, to be stopped half-way
    server = start_server(
        tmp_path / "server",
        UPLOADER_STORAGE_URL=f"s3://{S3_TEST_BUCKET}/{secrets.token_hex(6)}",
        UPLOADER_S3_ENDPOINT_URL=moto.url,
        UPLOADER_S3_PART_SIZE=str(5 * MiB),
        **S3_TEST_ENV,
    )
    try:
        created = httpx.post(server.tus_url, headers={**TUS, "Upload-Length": str(30 * MiB)})
        url = created.headers["Location"]
        first = httpx.patch(
            url, content=os.urandom(12 * MiB), headers={**PATCH_HEADERS, "Upload-Offset": "0"}, timeout=60
        )
        assert first.status_code == 204
        assert first.headers["Upload-Offset"] == str(12 * MiB)
        assert httpx.get(f"{server.url}/readyz").status_code == 200

        moto.stop()
        failed = httpx.patch(
            url,
            content=os.urandom(12 * MiB),
            headers={**PATCH_HEADERS, "Upload-Offset": str(12 * MiB)},
            timeout=120,
        )
        assert failed.status_code == 503
        assert failed.json()["code"] == "storage.unavailable"
        assert "Retry-After" in failed.headers
        # Nothing was stored, so nothing was recorded: the client resumes from here later.
        head = httpx.head(url, headers=TUS, timeout=30)
        assert head.headers["Upload-Offset"] == str(12 * MiB)
        ready = httpx.get(f"{server.url}/readyz", timeout=60)
        assert ready.status_code == 503
        assert ready.json()["checks"]["storage"].startswith("error")
        assert "Traceback" not in server.log()
    finally:
        server.stop()
        moto.stop()
