"""Two API processes on one PostgreSQL database creating at once: a token's ``max_files``
and a principal's quota are never exceeded; the CLI makes, lists and revokes keys and
mints tokens the server accepts; no credential reaches a log line."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.auth.tokens import SECRET, bearer, hs256
from tests.conftest import fresh_postgres_database
from tests.support import TUS, LiveServer, start_server, uploader_command

pytestmark = pytest.mark.e2e


@pytest.fixture
def two_servers(tmp_path: Path) -> Iterator[tuple[LiveServer, LiveServer]]:
    with fresh_postgres_database() as url:
        env = {
            "UPLOADER_DATABASE_URL": url,
            "UPLOADER_JWT_SECRET": SECRET,
            "UPLOADER_QUOTA_BYTES": "1000",
            "UPLOADER_STORAGE_URL": (tmp_path / "files").as_uri(),
        }
        first = start_server(tmp_path / "one", **env)
        try:
            second = start_server(tmp_path / "two", **env)
            try:
                yield first, second
            finally:
                second.stop()
        finally:
            first.stop()


async def _create_many(servers: tuple[LiveServer, LiveServer], token: str, count: int) -> list[int]:
    async with httpx.AsyncClient(timeout=30) as client:

        async def one(index: int) -> int:
            server = servers[index % 2]
            headers = {**TUS, "Upload-Length": "100", **bearer(token)}
            response = await client.post(server.tus_url, headers=headers)
            return response.status_code

        return list(await asyncio.gather(*(one(i) for i in range(count))))


def test_two_processes_creating_at_once_never_exceed_max_files_or_the_quota(
    two_servers: tuple[LiveServer, LiveServer],
) -> None:
    files_token = hs256("vera", jti="concurrent-batch", uploader={"max_files": 7})
    statuses = asyncio.run(_create_many(two_servers, files_token, 40))
    assert statuses.count(201) == 7, statuses
    assert set(statuses) == {201, 403}
    # 100-byte uploads against a 1000-byte quota: ten, however the creations interleave.
    statuses = asyncio.run(_create_many(two_servers, hs256("walt"), 40))
    assert statuses.count(201) == 10, statuses
    assert set(statuses) == {201, 403}
    for name, expected in (("vera", 700), ("walt", 1000)):
        usage = httpx.get(f"{two_servers[1].url}/api/v1/usage", headers=bearer(hs256(name))).json()
        assert usage["bytes"]["used"] == expected


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*uploader_command(), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_cli_manages_keys_and_mints_tokens_and_logs_never_show_them(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {**os.environ, "UPLOADER_DATA_DIR": str(data), "UPLOADER_JWT_SECRET": SECRET}
    env.pop("UPLOADER_DATABASE_URL", None)
    made = _cli(
        ["keys", "create", "ci", "--scope", "upload", "--scope", "read", "--quota-bytes", "5000"], env
    )
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert re.fullmatch(r"upk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", key)
    listed = _cli(["keys", "list"], env)
    assert '"name": "ci"' in listed.stdout
    assert key not in listed.stdout
    key_id = key[4:16]
    minted = _cli(["token", "xena", "--ttl", "10m", "--max-size", "1KiB", "--types", "text/*"], env)
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    server = start_server(
        data, UPLOADER_JWT_SECRET=SECRET, UPLOADER_ACCESS_LOG="true", UPLOADER_API_KEY_CACHE_SECONDS="1"
    )
    try:
        created = httpx.post(server.tus_url, headers={**TUS, "Upload-Length": "10", **bearer(key)})
        assert created.status_code == 201, created.text
        too_big = httpx.post(
            server.tus_url,
            headers={
                **TUS,
                "Upload-Length": "2048",
                "Upload-Metadata": "filetype dGV4dC9wbGFpbg==",
                **bearer(token),
            },
        )
        assert too_big.json()["code"] == "upload.too_large"
        listed_with_query = httpx.get(f"{server.url}/api/v1/uploads", params={"access_token": token})
        assert listed_with_query.status_code == 200
        assert httpx.get(f"{server.url}/api/v1/usage", headers={"X-API-Key": key}).status_code == 200
        revoked = _cli(["keys", "revoke", key_id], env)
        assert revoked.returncode == 0, revoked.stderr
        deadline = 5.0
        while (
            deadline > 0 and httpx.get(f"{server.url}/api/v1/usage", headers=bearer(key)).status_code == 200
        ):
            asyncio.run(asyncio.sleep(0.2))
            deadline -= 0.2
        assert httpx.get(f"{server.url}/api/v1/usage", headers=bearer(key)).status_code == 401
    finally:
        server.stop()
    log = server.log()
    assert "access_token=[redacted]" in log  # the access log had the request
    assert token not in log
    assert key not in log
    assert token.split(".")[2] not in log


def test_a_bad_access_setting_stops_the_server_with_a_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, "UPLOADER_DATA_DIR": str(tmp_path), "UPLOADER_JWT_SECRET": "too-short"}
    result = _cli(["serve", "--port", "1"], env)
    assert result.returncode == 2
    assert "UPLOADER_JWT_SECRET must be at least 32 bytes" in result.stderr
    assert "Traceback" not in result.stderr
    env = {**os.environ, "UPLOADER_DATA_DIR": str(tmp_path), "UPLOADER_RATE_LIMIT_CREATE": "lots"}
    result = _cli(["serve", "--port", "1"], env)
    assert result.returncode == 2
    assert "rate_limit_create" in result.stderr
