"""Multipart forms from real clients against a real server: curl, and a client cut off."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support import LiveServer, random_file

pytestmark = pytest.mark.e2e
MiB = 1024 * 1024


def test_curl_form_with_two_files_and_fields(live_server: LiveServer, tmp_path: Path) -> None:
    first = random_file(tmp_path / "scan.pdf", 5 * MiB + 17)
    second = random_file(tmp_path / "raw data.bin", 123_457)
    result = subprocess.run(
        [
            "curl", "-sS", "--fail-with-body",
            "-F", "project=apollo",
            "-F", "note=two files",
            "-F", f"scan=@{first};type=application/pdf",
            "-F", f"data=@{second}",
            f"{live_server.url}/api/v1/uploads",
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )  # fmt: skip
    created = json.loads(result.stdout)["uploads"]
    assert [u["filename"] for u in created] == ["scan.pdf", "raw data.bin"]
    assert created[0]["declared_type"] == "application/pdf"
    assert created[0]["metadata"]["project"] == "apollo"
    assert created[1]["metadata"]["note"] == "two files"
    for upload, path in zip(created, (first, second), strict=True):
        content = httpx.get(f"{live_server.url}{upload['links']['content']}").content
        assert hashlib.sha256(content).hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()


def test_form_cut_off_half_way_leaves_no_upload(live_server: LiveServer) -> None:
    boundary = "cutoff"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="f"; filename="big.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    declared = len(head) + 8 * MiB + 64
    files = live_server.data_dir / "files"
    with socket.create_connection(("127.0.0.1", live_server.port)) as connection:
        connection.sendall(
            (
                f"POST /api/v1/uploads HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                f"Content-Length: {declared}\r\n\r\n"
            ).encode()
            + head
            + b"x" * (4 * MiB)
        )
        # Bytes are in storage while the request is still open...
        assert wait_for(lambda: any(p.is_file() and p.stat().st_size > 0 for p in files.rglob("*")))
    # ...and the server removes them once the client has gone.
    assert wait_for(lambda: not any(p.is_file() for p in files.rglob("*")))
    assert httpx.get(f"{live_server.url}/api/v1/uploads").json()["items"] == []


def wait_for(condition: Callable[[], bool], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False
