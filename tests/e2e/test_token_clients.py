"""Real clients with a minted upload token against a server that requires one: tuspy and
tus-js-client (with parallel uploads, so concatenation runs under the token too)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tusclient import client as tus_client

from tests.auth.tokens import SECRET, bearer, hs256
from tests.e2e.test_clients import NodeClient, node_client
from tests.support import LiveServer, random_file, start_server

pytestmark = pytest.mark.e2e
__all__ = ["node_client"]  # the fixture, shared with the client tests
MiB = 1024 * 1024


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[LiveServer]:
    server = start_server(tmp_path / "server", UPLOADER_JWT_SECRET=SECRET)
    try:
        yield server
    finally:
        server.stop()


def _settled(server: LiveServer, url: str, token: str) -> dict[str, object]:
    upload_id = url.rstrip("/").rsplit("/", 1)[-1]
    for _ in range(300):
        status: dict[str, object] = httpx.get(
            f"{server.url}/api/v1/uploads/{upload_id}", headers=bearer(token), timeout=10
        ).json()
        if status["state"] in ("ready", "failed"):
            return status
        time.sleep(0.1)
    raise AssertionError(f"upload {upload_id} did not settle")


def test_tuspy_uploads_with_a_minted_token(token_server: LiveServer, tmp_path: Path) -> None:
    source = random_file(tmp_path / "tuspy.bin", 3 * MiB + 11)
    token = hs256("zoe", jti="tuspy-run", uploader={"max_size": 4 * MiB, "max_files": 1})
    anonymous = tus_client.TusClient(token_server.tus_url)
    with pytest.raises(Exception, match="401"):
        anonymous.uploader(str(source), chunk_size=MiB).upload()
    client = tus_client.TusClient(token_server.tus_url, headers=bearer(token))
    uploader = client.uploader(str(source), chunk_size=MiB, metadata={"filename": "tuspy.bin"})
    uploader.upload()
    assert uploader.url is not None
    status = _settled(token_server, uploader.url, token)
    assert status["state"] == "ready"
    assert status["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    # The token's one file is used up.
    again = client.uploader(str(source), chunk_size=MiB)
    with pytest.raises(Exception, match="403"):
        again.upload()


def test_tus_js_client_parallel_uploads_with_a_minted_token(
    token_server: LiveServer, node_client: NodeClient, tmp_path: Path
) -> None:
    source = random_file(tmp_path / "parallel.bin", 2 * MiB + 5)
    # One file, of one type: the three parts are pieces of it, not files.
    limits = {"types": ["application/octet-stream"], "max_files": 1, "max_size": 3 * MiB}
    token = hs256("zoe", jti="parallel-run", uploader=limits)
    url = node_client.upload(
        token_server.tus_url,
        source,
        "--parallel",
        "3",
        "--header",
        f"Authorization=Bearer {token}",
        "--metadata",
        "filename=parallel.bin",
        "filetype=application/octet-stream",
    )
    status = _settled(token_server, url, token)
    assert status["state"] == "ready"
    assert status["concat"] == "final"
    assert status["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    # Another principal cannot see it.
    other = httpx.get(url.replace("/files/", "/api/v1/uploads/"), headers=bearer(hs256("someone")))
    assert other.status_code == 404
