"""Real tus clients against a real server process: tuspy, tus-js-client under Node, and curl.

Each test starts ``uploader serve`` on loopback (the ``live_server`` fixture), uploads
random bytes with an off-the-shelf client, and checks the server's copy byte for byte,
then the processing result (``state == "ready"`` and the SHA-256).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import httpx
import pytest
from tusclient import client as tus_client
from tusclient.storage.filestorage import FileStorage
from tusclient.uploader import Uploader

from tests.support import REPO, TUS, LiveServer, metadata, random_file

pytestmark = pytest.mark.e2e

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
JS_DIR = REPO / "tests" / "js"
JS_SCRIPT = JS_DIR / "tus_upload.mjs"
KiB = 1024
MiB = 1024 * KiB


# --------------------------------------------------------------------------- helpers


def upload_id_of(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def server_offset(url: str) -> int:
    response = httpx.head(url, headers=TUS, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers.get("Cache-Control") == "no-store"
    return int(response.headers["Upload-Offset"])


def content_of(server: LiveServer, upload_id: str) -> bytes:
    response = httpx.get(f"{server.url}/api/v1/uploads/{upload_id}/content", timeout=30)
    assert response.status_code == 200, response.text
    return response.content


def status_of(server: LiveServer, upload_id: str) -> dict[str, object]:
    response = httpx.get(f"{server.url}/api/v1/uploads/{upload_id}", timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def wait_ready(server: LiveServer, upload_id: str, timeout: float = 30.0) -> dict[str, object]:
    """Poll the status API until processing is done (received -> processing -> ready)."""
    deadline = time.monotonic() + timeout
    status = status_of(server, upload_id)
    while status["state"] != "ready":
        assert status["state"] in ("received", "processing"), (status, server.log()[-3000:])
        if time.monotonic() > deadline:
            pytest.fail(f"upload {upload_id} not ready after {timeout} s: {status}")
        time.sleep(0.05)
        status = status_of(server, upload_id)
    return status


def assert_stored(server: LiveServer, url: str, source: Path) -> dict[str, object]:
    """The server holds exactly the file's bytes, and processing hashed them."""
    data = source.read_bytes()
    uid = upload_id_of(url)
    assert server_offset(url) == len(data)
    stored = content_of(server, uid)
    assert len(stored) == len(data)
    assert stored == data
    status = wait_ready(server, uid)
    assert status["offset"] == status["length"] == len(data)
    assert status["sha256"] == hashlib.sha256(data).hexdigest()
    return status


# --------------------------------------------------------------------------- tuspy


@pytest.mark.parametrize("resume_by", ["url", "url_storage"])
def test_tuspy_resumes_with_a_new_client(live_server: LiveServer, tmp_path: Path, resume_by: str) -> None:
    """Upload part of a file, drop the client, and finish it with a brand-new client."""
    size = 3 * MiB + 12_345
    chunk = 256 * KiB
    source = random_file(tmp_path / "tuspy.bin", size)
    storage_path = tmp_path / "tus-urls.json"
    resumable = resume_by == "url_storage"

    def new_uploader(url: str | None) -> Uploader:
        client = tus_client.TusClient(live_server.tus_url)
        storage = FileStorage(str(storage_path)) if resumable else None
        return client.uploader(
            file_path=str(source),
            url=url,
            chunk_size=chunk,
            metadata={"filename": "tuspy.bin", "filetype": "application/octet-stream"},
            upload_checksum=True,  # Upload-Checksum: sha1 on every PATCH
            store_url=resumable,
            url_storage=storage,
        )

    first = new_uploader(None)
    for _ in range(5):
        first.upload_chunk()
    url = first.url
    assert url is not None
    assert url.startswith(live_server.tus_url)
    del first

    reached = server_offset(url)
    assert 0 < reached < size
    assert reached == 5 * chunk

    # A fresh client: either told the URL, or finding it in its URL storage by fingerprint.
    second = new_uploader(url if resume_by == "url" else None)
    assert second.url == url
    assert second.offset == reached  # it asked the server (HEAD) where to go on from
    second.upload()
    assert second.offset == size

    status = assert_stored(live_server, url, source)
    assert status["filename"] == "tuspy.bin"
    assert status["concat"] == "none"


# --------------------------------------------------------------------------- tus-js-client (Node)


@dataclass(frozen=True)
class NodeClient:
    node: str

    def upload(self, endpoint: str, source: Path, *args: str, timeout: float = 120) -> str:
        result = subprocess.run(
            [self.node, str(JS_SCRIPT), endpoint, str(source), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=JS_DIR,
        )
        assert result.returncode == 0, f"tus_upload.mjs failed ({result.returncode}):\n{result.stderr}"
        lines = result.stdout.splitlines()
        assert len(lines) == 1, result.stdout
        return lines[0]


def _missing_tool(message: str) -> NoReturn:
    if IN_CI:
        pytest.fail(f"{message} (required in CI)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def node_client() -> NodeClient:
    """Node with tus-js-client installed in tests/js (``npm ci`` from the lockfile if needed)."""
    node = shutil.which("node")
    if node is None:
        _missing_tool("node is not installed: the tus-js-client tests need Node.js >= 18")
    marker = JS_DIR / "node_modules" / "tus-js-client" / "package.json"
    # One installer at a time when pytest-xdist workers all reach this fixture together.
    with open(Path(tempfile.gettempdir()) / "uploader-tests-npm.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.is_file():
            npm = shutil.which("npm")
            if npm is None:
                _missing_tool(f"npm is not installed and {JS_DIR}/node_modules is missing")
            result = subprocess.run(
                [npm, "ci", "--prefix", str(JS_DIR), "--no-audit", "--no-fund"],
                capture_output=True,
                text=True,
                timeout=300,
            )
            if result.returncode != 0 or not marker.is_file():
                pytest.fail(f"npm ci --prefix {JS_DIR} failed:\n{result.stdout}\n{result.stderr}")
    return NodeClient(node)


def test_tus_js_client_small_chunks(live_server: LiveServer, node_client: NodeClient, tmp_path: Path) -> None:
    source = random_file(tmp_path / "small-chunks.bin", 1 * MiB + 3)
    url = node_client.upload(
        live_server.tus_url,
        source,
        "--chunk-size",
        str(64 * KiB),
        "--metadata",
        "filename=small chunks.bin",
        "filetype=application/octet-stream",
    )
    assert url.startswith(live_server.tus_url)
    status = assert_stored(live_server, url, source)
    assert status["filename"] == "small chunks.bin"
    assert status["declared_type"] == "application/octet-stream"
    assert status["concat"] == "none"
    # The tus URL itself serves the bytes too.
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200
    assert response.content == source.read_bytes()


def test_tus_js_client_parallel_concatenation(
    live_server: LiveServer, node_client: NodeClient, tmp_path: Path
) -> None:
    source = random_file(tmp_path / "parallel.bin", 2 * MiB + 1)
    url = node_client.upload(
        live_server.tus_url,
        source,
        "--parallel",
        "3",
        "--chunk-size",
        str(256 * KiB),
        "--metadata",
        "filename=parallel.bin",
    )
    status = assert_stored(live_server, url, source)
    assert status["concat"] == "final"
    assert status["filename"] == "parallel.bin"


def test_tus_js_client_speaks_the_ietf_draft(
    live_server: LiveServer, node_client: NodeClient, tmp_path: Path
) -> None:
    """tus-js-client's ``ietf-draft-05`` protocol (interop version 6) end to end."""
    source = random_file(tmp_path / "ietf.bin", 3 * MiB + 5)
    url = node_client.upload(
        live_server.tus_url,
        source,
        "--protocol",
        "ietf-draft-05",
        "--chunk-size",
        str(1 * MiB),
        "--metadata",
        "filename=ietf.bin",
    )
    status = assert_stored(live_server, url, source)
    assert status["filename"] == "ietf.bin"
    state = httpx.head(url, headers={"Upload-Draft-Interop-Version": "6"})
    assert state.headers["Upload-Complete"] == "?1"
    assert state.headers["Upload-Limit"].endswith("expires=86400")  # draft 05's name for max-age


# --------------------------------------------------------------------------- curl


@dataclass
class CurlResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    trace: str  # curl's stderr: its verbose trace when called with -v


def curl(*args: str, stdin: bytes | None = None) -> CurlResponse:
    """Run ``curl -sS -i ...`` and parse the last (non-1xx) response."""
    exe = shutil.which("curl")
    if exe is None:
        _missing_tool("curl is not installed")
    result = subprocess.run([exe, "-sS", "-i", *args], input=stdin, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    rest = result.stdout
    while True:
        head, _, rest = rest.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        if not 100 <= status < 200:
            break
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return CurlResponse(status, headers, rest, result.stderr.decode(errors="replace"))


def curl_create(server: LiveServer, length: int, filename: str) -> str:
    response = curl(
        "-X",
        "POST",
        "-H",
        "Tus-Resumable: 1.0.0",
        "-H",
        f"Upload-Length: {length}",
        "-H",
        f"Upload-Metadata: {metadata(filename=filename)}",
        server.tus_url,
    )
    assert response.status == 201, response
    assert response.headers["tus-resumable"] == "1.0.0"
    location = response.headers["location"]
    assert location.startswith(server.tus_url)
    return location


def curl_offset(url: str) -> int:
    response = curl("-I", "-H", "Tus-Resumable: 1.0.0", url)
    assert response.status == 200, response
    assert response.headers["cache-control"] == "no-store"
    return int(response.headers["upload-offset"])


PATCH_ARGS = ("-H", "Tus-Resumable: 1.0.0", "-H", "Content-Type: application/offset+octet-stream")


def test_curl_two_patches(live_server: LiveServer, tmp_path: Path) -> None:
    size = 1 * MiB + 777
    source = random_file(tmp_path / "curl.bin", size)
    data = source.read_bytes()
    split = 600 * KiB
    (tmp_path / "part1").write_bytes(data[:split])
    (tmp_path / "part2").write_bytes(data[split:])

    url = curl_create(live_server, size, "curl.bin")
    assert curl_offset(url) == 0

    # First chunk: --data-binary from a file.
    first = curl(
        "-X", "PATCH", *PATCH_ARGS, "-H", "Upload-Offset: 0", "--data-binary", f"@{tmp_path / 'part1'}", url
    )
    assert first.status == 204, first
    assert first.headers["upload-offset"] == str(split)
    assert curl_offset(url) == split

    # A PATCH at the wrong offset is refused with 409 and changes nothing.
    conflict = curl("-X", "PATCH", *PATCH_ARGS, "-H", "Upload-Offset: 0", "--data-binary", "xyz", url)
    assert conflict.status == 409, conflict
    assert curl_offset(url) == split

    # Second chunk: -T (upload a file; -X turns curl's PUT into PATCH).
    second = curl(
        "-X", "PATCH", *PATCH_ARGS, "-H", f"Upload-Offset: {split}", "-T", str(tmp_path / "part2"), url
    )
    assert second.status == 204, second
    assert second.headers["upload-offset"] == str(size)
    assert curl_offset(url) == size

    content = curl(f"{live_server.url}/api/v1/uploads/{upload_id_of(url)}/content")
    assert content.status == 200, content.headers
    assert content.headers["content-length"] == str(size)
    assert content.body == data

    status = assert_stored(live_server, url, source)
    assert status["filename"] == "curl.bin"


def test_curl_chunked_patch_from_stdin(live_server: LiveServer, tmp_path: Path) -> None:
    """One PATCH with no Content-Length (Transfer-Encoding: chunked) streamed from stdin."""
    size = 2 * MiB + 5
    source = random_file(tmp_path / "stdin.bin", size)
    data = source.read_bytes()
    url = curl_create(live_server, size, "stdin.bin")

    # curl sends a body read from stdin (-T -) chunked, as it cannot know its length.
    response = curl("-v", "-X", "PATCH", *PATCH_ARGS, "-H", "Upload-Offset: 0", "-T", "-", url, stdin=data)
    assert "> Transfer-Encoding: chunked" in response.trace
    assert "> Content-Length" not in response.trace
    assert response.status == 204, response.headers
    assert response.headers["upload-offset"] == str(size)
    assert curl_offset(url) == size

    status = assert_stored(live_server, url, source)
    assert status["filename"] == "stdin.bin"
