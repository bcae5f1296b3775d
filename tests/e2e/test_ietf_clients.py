"""The IETF resumable-upload draft with curl against a real server: the README's recipes."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.support import LiveServer, random_file

pytestmark = pytest.mark.e2e
MiB = 1024 * 1024
DRAFT = ["-H", "Upload-Draft-Interop-Version: 8"]


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, check=True, timeout=60)


def test_single_request_upload_with_curl(live_server: LiveServer, tmp_path: Path) -> None:
    source = random_file(tmp_path / "report.pdf", 2 * MiB + 3)
    result = curl(
        "-X", "POST", *DRAFT, "-H", "Upload-Complete: ?1",
        "-H", "Content-Type: application/pdf",
        "-H", 'Content-Disposition: inline; filename="report.pdf"',
        "--data-binary", f"@{source}", live_server.tus_url,
    )  # fmt: skip
    status = json.loads(result.stdout)
    assert status["length"] == source.stat().st_size
    assert status["filename"] == "report.pdf"
    assert httpx.get(f"{live_server.url}{status['links']['content']}").content == source.read_bytes()


def test_upload_cut_off_and_resumed_with_head_and_patch(live_server: LiveServer, tmp_path: Path) -> None:
    source = random_file(tmp_path / "video.bin", 8 * MiB + 11)
    data = source.read_bytes()
    created = curl("-i", "-X", "POST", *DRAFT, "-H", "Upload-Complete: ?0", live_server.tus_url)
    location = next(
        line.split(":", 1)[1].strip()
        for line in created.stdout.splitlines()
        if line.lower().startswith("location:")
    )
    path = location.removeprefix(live_server.url)
    # One append with everything, cut off after 5 MiB.
    with socket.create_connection(("127.0.0.1", live_server.port)) as connection:
        connection.sendall(
            (
                f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpload-Draft-Interop-Version: 8\r\n"
                f"Upload-Complete: ?1\r\nUpload-Offset: 0\r\nContent-Type: application/partial-upload\r\n"
                f"Content-Length: {len(data)}\r\n\r\n"
            ).encode()
            + data[: 5 * MiB]
        )
        time.sleep(0.5)
    deadline = time.monotonic() + 10
    while True:
        head = curl("-I", *DRAFT, location).stdout
        fields = dict(line.split(": ", 1) for line in head.strip().splitlines()[1:] if ": " in line)
        offset = int(fields.get("upload-offset", "0"))
        if offset > 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert 0 < offset <= 5 * MiB
    assert fields["upload-complete"] == "?0"
    (tmp_path / "rest.bin").write_bytes(data[offset:])
    rest = tmp_path / "rest.bin"
    resumed = curl(
        "-i", "-X", "PATCH", *DRAFT, "-H", "Upload-Complete: ?1", "-H", f"Upload-Offset: {offset}",
        "-H", "Content-Type: application/partial-upload", "--data-binary", f"@{rest}", location,
    )  # fmt: skip
    assert "HTTP/1.1 200 OK" in resumed.stdout
    assert "upload-complete: ?1" in resumed.stdout.lower()
    assert httpx.get(location).content == data
