"""The ``uploader`` client commands against a real server."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.images import jpeg
from tests.support import LiveServer, random_file, uploader_command

pytestmark = pytest.mark.e2e
MiB = 1024 * 1024


def cli_env(server: LiveServer, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "UPLOADER_URL": server.url, "XDG_CACHE_HOME": str(tmp_path / "cache")}


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*uploader_command(), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_upload_killed_part_way_resumes_with_the_same_command(
    live_server: LiveServer, tmp_path: Path
) -> None:
    source = random_file(tmp_path / "archive.bin", 160 * MiB)
    env = cli_env(live_server, tmp_path)
    command = [*uploader_command(), "upload", str(source), "--chunk-size", "1MiB"]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    partial: dict[str, object] | None = None
    while partial is None:
        assert time.monotonic() < deadline, "the upload never started"
        items = httpx.get(f"{live_server.url}/api/v1/uploads").json()["items"]
        started = [u for u in items if 0 < u["offset"] < u["length"]]
        partial = started[0] if started else None
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    stopped_at = httpx.get(f"{live_server.url}/api/v1/uploads/{partial['id']}").json()["offset"]
    assert 0 < stopped_at < source.stat().st_size
    second = cli(env, "upload", str(source), "--chunk-size", "1MiB")
    assert second.returncode == 0, second.stderr
    url = second.stdout.strip()
    assert url.endswith(str(partial["id"])), "the second run started a new upload instead of resuming"
    content = httpx.get(f"{live_server.url}/api/v1/uploads/{partial['id']}/content").content
    assert sha256_of(content) == sha256_of(source.read_bytes())


def test_parallel_parts_give_the_same_bytes(live_server: LiveServer, tmp_path: Path) -> None:
    source = random_file(tmp_path / "data.bin", 48 * MiB + 12345)
    result = cli(
        cli_env(live_server, tmp_path), "upload", str(source), "--parallel", "4", "--chunk-size", "4MiB"
    )
    assert result.returncode == 0, result.stderr
    upload_id = result.stdout.strip().rsplit("/", 1)[-1]
    status = httpx.get(f"{live_server.url}/api/v1/uploads/{upload_id}").json()
    assert status["filename"] == "data.bin"
    assert status["concat"] == "final"
    content = httpx.get(f"{live_server.url}/api/v1/uploads/{upload_id}/content").content
    assert sha256_of(content) == sha256_of(source.read_bytes())


def test_watch_status_and_resumable_download(live_server: LiveServer, tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(jpeg(1600, 1200, orientation=6))
    env = cli_env(live_server, tmp_path)
    uploaded = cli(env, "upload", str(photo), "--watch")
    assert uploaded.returncode == 0, uploaded.stderr
    url = uploaded.stdout.strip()
    assert "ready" in uploaded.stderr
    status = cli(env, "status", url)
    assert status.returncode == 0
    assert '"state": "ready"' in status.stdout
    assert cli(env, "watch", url).stdout.strip() == "ready"
    # A download cut short continues from where it stopped.
    target = tmp_path / "copy.jpg"
    whole = httpx.get(f"{live_server.url}/api/v1/uploads/{url.rsplit('/', 1)[-1]}/content")
    (tmp_path / "copy.jpg.part").write_bytes(whole.content[:1000])
    (tmp_path / "copy.jpg.part.etag").write_text(whole.headers["etag"])
    downloaded = cli(env, "download", url, "-o", str(target))
    assert downloaded.returncode == 0, downloaded.stderr
    assert target.read_bytes() == photo.read_bytes()
    variant = cli(env, "download", url, "--variant", "256.webp", "-o", str(tmp_path / "thumb.webp"))
    assert variant.returncode == 0, variant.stderr
    assert (tmp_path / "thumb.webp").read_bytes()[:4] == b"RIFF"


def test_errors_fit_scripts(live_server: LiveServer, tmp_path: Path) -> None:
    env = cli_env(live_server, tmp_path)
    missing_file = cli(env, "upload", str(tmp_path / "nope.bin"))
    assert missing_file.returncode == 1
    assert "no such file" in missing_file.stderr
    assert missing_file.stdout == ""
    unknown = cli(env, "status", "0" * 32)
    assert unknown.returncode == 1
    assert "no upload" in unknown.stderr
    unreachable = cli({**env, "UPLOADER_URL": "http://127.0.0.1:9"}, "status", "0" * 32)
    assert unreachable.returncode == 3
    bad_size = cli(env, "upload", str(tmp_path), "--chunk-size", "lots")
    assert bad_size.returncode == 2


def test_dedup_sends_nothing_the_server_already_holds(live_server: LiveServer, tmp_path: Path) -> None:
    source = random_file(tmp_path / "film.bin", 12 * MiB + 7)
    env = cli_env(live_server, tmp_path)
    first = cli(env, "upload", "--dedup", "--watch", str(source))
    assert first.returncode == 0, first.stderr
    first_id = first.stdout.strip().splitlines()[0].rsplit("/", 1)[-1]
    second = cli(env, "upload", "--dedup", str(source))
    assert second.returncode == 0, second.stderr
    assert "already on the server" in second.stderr
    second_id = second.stdout.strip().rsplit("/", 1)[-1]
    assert second_id != first_id
    status = httpx.get(f"{live_server.url}/api/v1/uploads/{second_id}").json()
    assert status["state"] == "ready"
    assert status["sha256"] == sha256_of(source.read_bytes())
    # Nothing was sent: the server received the file's bytes once, for the first upload.
    metrics = httpx.get(f"{live_server.url}/metrics").text
    received = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("uploader_bytes_received_total")
    )
    assert received == source.stat().st_size
    # Another file is a miss, and goes up as usual.
    other = random_file(tmp_path / "other.bin", 3 * MiB)
    third = cli(env, "upload", "--dedup", str(other))
    assert third.returncode == 0, third.stderr
    third_id = third.stdout.strip().rsplit("/", 1)[-1]
    content = httpx.get(f"{live_server.url}/api/v1/uploads/{third_id}/content").content
    assert content == other.read_bytes()
