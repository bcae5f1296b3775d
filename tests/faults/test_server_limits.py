"""A full disk, expiry during a write, tombstones, idle and hostile clients, SSE replays."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.slow_client import HandFedPatch
from tests.faults.clients import MiB, TricklingPatch, create, head_offset, raw_request, send_from
from tests.faults.conftest import open_descriptors
from tests.faults.invariant import assert_invariant
from tests.support import PATCH_HEADERS, TUS, metadata, start_server
from uploader.settings import Settings

pytestmark = [pytest.mark.faults, pytest.mark.e2e]


def test_a_full_disk_gives_507_leaks_no_descriptor_and_deleting_frees_the_space(small_disk: Path) -> None:
    server = start_server(small_disk / "data")
    settings = Settings(data_dir=small_disk / "data")
    assert server.process is not None
    try:
        before = open_descriptors(server.process.pid)
        urls = []
        for _ in range(12):
            created = httpx.post(server.tus_url, headers={**TUS, "Upload-Length": str(20 * MiB)}, timeout=30)
            if created.status_code == 507:  # the database shares the disk: it is full too
                assert created.json()["code"] == "storage.full"
                continue
            assert created.status_code == 201, created.text
            url = created.headers["Location"]
            urls.append(url)
            response = httpx.patch(
                url, content=os.urandom(20 * MiB), headers={**PATCH_HEADERS, "Upload-Offset": "0"}, timeout=60
            )
            assert response.status_code == 507, (response.status_code, response.text)
            assert response.json()["code"] == "storage.full"
        assert open_descriptors(server.process.pid) <= before + 2
        # The database is on the same disk: a creation that cannot be recorded is 507 too.
        filler = small_disk / "filler"
        with open(filler, "wb") as out:
            try:
                while True:
                    out.write(b"\0" * 65536)
            except OSError:
                pass
        big_metadata = metadata(filename="x" * 10_000)
        answers = []
        for _ in range(200):  # until the database's free pages are used up too
            created = httpx.post(
                server.tus_url,
                headers={**TUS, "Upload-Length": "10", "Upload-Metadata": big_metadata},
                timeout=30,
            )
            answers.append(created.status_code)
            if created.status_code != 201:
                break
            urls.append(created.headers["Location"])
        assert answers[-1] == 507, answers
        assert created.json()["code"] == "storage.full"
        filler.unlink()
        for url in urls:
            assert httpx.delete(url, headers=TUS, timeout=30).status_code == 204
        free = shutil.disk_usage(small_disk).free
        assert free > 12 * MiB, f"only {free} bytes free after every upload was deleted"
        assert_invariant(settings, {}, server.url)
        assert "request.failed" not in server.log()
    finally:
        server.stop()


def test_concatenation_cannot_exceed_the_maximum_size(tmp_path: Path) -> None:
    server = start_server(tmp_path / "server", UPLOADER_MAX_UPLOAD_SIZE=str(10 * MiB))
    settings = Settings(data_dir=tmp_path / "server")
    try:
        part = create(server.tus_url, 9 * MiB, **{"Upload-Concat": "partial"})
        data = os.urandom(9 * MiB)
        assert (
            httpx.patch(part, content=data, headers={**PATCH_HEADERS, "Upload-Offset": "0"}).status_code
            == 204
        )
        deferred = httpx.post(
            server.tus_url, headers={**TUS, "Upload-Defer-Length": "1", "Upload-Concat": "partial"}
        ).headers["Location"]
        path = "/files/" + part.rsplit("/", 1)[1]
        known = httpx.post(server.tus_url, headers={**TUS, "Upload-Concat": "final;" + " ".join([path] * 5)})
        assert known.status_code == 413, known.text
        # With a part of unknown length, refused once the length is known, before any copy.
        names = " ".join([path, "/files/" + deferred.rsplit("/", 1)[1]])
        final = httpx.post(server.tus_url, headers={**TUS, "Upload-Concat": f"final;{names}"})
        assert final.status_code == 201
        response = httpx.patch(
            deferred,
            content=os.urandom(2 * MiB),
            headers={**PATCH_HEADERS, "Upload-Offset": "0", "Upload-Length": str(2 * MiB)},
        )
        assert response.status_code == 204
        status = httpx.get(
            f"{server.url}/api/v1/uploads/{final.headers['Location'].rsplit('/', 1)[1]}"
        ).json()
        assert status["state"] == "failed"
        assert status["failure_reason"].startswith("upload.too_large")
        assert_invariant(settings, {part.rsplit("/", 1)[1]: [data]}, server.url)
    finally:
        server.stop()


def test_an_upload_being_written_is_never_expired(tmp_path: Path) -> None:
    server = start_server(
        tmp_path / "server", UPLOADER_UPLOAD_TTL_SECONDS="3", UPLOADER_CLEANUP_INTERVAL_SECONDS="0.5"
    )
    settings = Settings(data_dir=tmp_path / "server")
    try:
        data = os.urandom(8 * MiB)
        url = create(server.tus_url, len(data))
        patch = TricklingPatch(url, data, rate=MiB)
        assert patch.wait() == 204, (patch.status, patch.error, server.log()[-2000:])
        assert head_offset(url) == len(data)
        assert_invariant(settings, {url.rsplit("/", 1)[1]: [data]}, server.url)
    finally:
        server.stop()


def test_tombstones_are_pruned_after_their_retention(tmp_path: Path) -> None:
    server = start_server(
        tmp_path / "server",
        UPLOADER_TOMBSTONE_RETENTION_SECONDS="1",
        UPLOADER_CLEANUP_INTERVAL_SECONDS="0.5",
    )
    settings = Settings(data_dir=tmp_path / "server")
    try:
        big = metadata(notes="n" * 12_000)
        for _ in range(50):
            url = create(server.tus_url, 10, **{"Upload-Metadata": big})
            assert httpx.delete(url, headers=TUS).status_code == 204
        deadline = time.monotonic() + 15
        while assert_invariant(settings, {}):
            assert time.monotonic() < deadline, "terminated uploads were never pruned"
            time.sleep(0.5)
        assert httpx.get(f"{server.url}/api/v1/uploads").json()["items"] == []
    finally:
        server.stop()


def test_an_idle_body_is_ended_recorded_and_released(tmp_path: Path) -> None:
    server = start_server(tmp_path / "server", UPLOADER_BODY_IDLE_TIMEOUT_SECONDS="2")
    settings = Settings(data_dir=tmp_path / "server")
    try:
        data = os.urandom(8 * MiB)
        url = create(server.tus_url, len(data))
        feeder = HandFedPatch(url, 0, len(data))
        feeder.send(data[: 6 * MiB])  # then nothing more
        started = time.monotonic()
        response = feeder.response()
        assert time.monotonic() - started < 8
        assert response.status == 408
        offset = int(response.getheader("Upload-Offset") or -1)
        feeder.close()
        assert 0 < offset <= 6 * MiB
        assert head_offset(url) == offset
        rest = send_from(url, data, offset)
        assert rest.status_code == 204
        assert_invariant(settings, {url.rsplit("/", 1)[1]: [data]}, server.url)
    finally:
        server.stop()


def test_sse_history_replays_are_bounded_and_never_stall_the_server(tmp_path: Path) -> None:
    server = start_server(tmp_path / "server", UPLOADER_SSE_MAX_STREAMS_PER_PRINCIPAL="50")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for _ in range(600):  # 1,200 events in the owner's history
                location = client.post("/files/", headers={**TUS, "Upload-Length": "10"}).headers["Location"]
                client.delete(location, headers=TUS)
        slowest = 0.0
        stop = threading.Event()

        def probe() -> None:
            nonlocal slowest
            while not stop.is_set():
                started = time.monotonic()
                httpx.get(f"{server.url}/healthz", timeout=60)
                slowest = max(slowest, time.monotonic() - started)
                time.sleep(0.05)

        prober = threading.Thread(target=probe)
        prober.start()
        replayed = 0
        try:
            for _ in range(4):  # 200 streams opened and dropped, 50 at a time
                streams = [httpx.stream("GET", f"{server.url}/api/v1/events", timeout=30) for _ in range(50)]
                for stream in streams:
                    response = stream.__enter__()
                    assert response.status_code == 200
                    replayed = max(
                        replayed, sum(1 for line in _first_bytes(response) if line.startswith("id: "))
                    )
                for stream in streams:
                    stream.__exit__(None, None, None)
            over = [httpx.stream("GET", f"{server.url}/api/v1/events", timeout=30) for _ in range(51)]
            answers = [stream.__enter__().status_code for stream in over]
            assert answers.count(429) == 1
            for stream in over:
                stream.__exit__(None, None, None)
        finally:
            stop.set()
            prober.join()
        assert replayed <= 1000  # a window of the history, not all 1,200 events
        assert slowest < 2, f"/healthz took {slowest:.1f} s"
    finally:
        server.stop()


def _first_bytes(response: httpx.Response, size: int = 400_000) -> list[str]:
    received = b""
    for chunk in response.iter_bytes():
        received += chunk
        if len(received) >= size or received.count(b"\n\nid: ") >= 999:
            break
    return received.decode(errors="replace").splitlines()


def test_huge_and_trickled_headers_are_refused_before_any_route(tmp_path: Path) -> None:
    server = start_server(tmp_path / "server", UPLOADER_HEADER_TIMEOUT_SECONDS="2")
    try:
        huge = b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (8 * MiB) + b"\r\n\r\n"
        answer = raw_request(server.url, huge)
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        # Headers complete but too large (one read): one answer, ours, and no 400 after it.
        whole = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
        answer = raw_request(server.url, whole)
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        assert answer.count(b"HTTP/1.1 ") == 1, answer[-300:]
        many = (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%d: y\r\n" % n for n in range(100_000))
            + b"\r\n"
        )
        assert raw_request(server.url, many).startswith(b"HTTP/1.1 431")
        # A header trickled byte by byte is cut at the header timeout.
        url = urlsplit(server.url)
        started = time.monotonic()
        with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            answer = b""
            try:
                for _ in range(60):
                    sock.sendall(b"z")
                    time.sleep(0.25)
            except OSError:
                pass
            with contextlib.suppress(OSError):
                answer = sock.recv(65536)
        assert time.monotonic() - started < 8
        assert answer.startswith(b"HTTP/1.1 408") or answer == b""
        # Ordinary requests are untouched.
        assert httpx.get(f"{server.url}/healthz", headers={"X-Ok": "a" * 30_000}).status_code == 200
    finally:
        server.stop()


def test_deleting_a_part_while_its_final_upload_is_made_never_leaves_a_stuck_final(tmp_path: Path) -> None:
    server = start_server(tmp_path / "server", UPLOADER_PROCESSING="off")
    settings = Settings(data_dir=tmp_path / "server")
    try:
        sent: dict[str, list[bytes]] = {}
        for round_ in range(4):
            big, small = os.urandom(40 * MiB), os.urandom(MiB)
            parts = []
            for data in (big, small):
                url = create(server.tus_url, len(data), **{"Upload-Concat": "partial"})
                response = httpx.patch(
                    url, content=data, headers={**PATCH_HEADERS, "Upload-Offset": "0"}, timeout=60
                )
                assert response.status_code == 204
                parts.append(url)
                sent[url.rsplit("/", 1)[1]] = [data]
            names = " ".join("/files/" + url.rsplit("/", 1)[1] for url in parts)
            answers: dict[str, httpx.Response] = {}

            def make_final(names: str = names, answers: dict[str, httpx.Response] = answers) -> None:
                headers = {**TUS, "Upload-Concat": f"final;{names}"}
                answers["final"] = httpx.post(server.tus_url, headers=headers, timeout=60)

            maker = threading.Thread(target=make_final)
            maker.start()
            time.sleep(0.002 * round_)
            deleted = httpx.delete(parts[0], headers=TUS, timeout=60)
            maker.join(60)
            assert deleted.status_code in (204, 423), deleted.text
            final = answers["final"]
            assert final.status_code in (201, 400), final.text
            if final.status_code == 201:
                final_id = final.headers["Location"].rsplit("/", 1)[1]
                status = httpx.get(f"{server.url}/api/v1/uploads/{final_id}").json()
                assert status["state"] in ("ready", "failed"), status
                if status["state"] == "failed":
                    assert status["failure_reason"]
                else:
                    sent[final_id] = [big + small]
        assert_invariant(settings, sent, server.url)
        assert "request.failed" not in server.log()
    finally:
        server.stop()


def test_a_download_whose_bytes_are_missing_is_a_503_not_a_promise(tmp_path: Path) -> None:
    server = start_server(tmp_path / "server", UPLOADER_PROCESSING="off")
    try:
        url = create(server.tus_url, 5)
        assert (
            httpx.patch(url, content=b"hello", headers={**PATCH_HEADERS, "Upload-Offset": "0"}).status_code
            == 204
        )
        for path in (tmp_path / "server" / "files").rglob("*"):
            if path.is_file():
                path.unlink()  # the bytes vanish under the service (a disk replaced, say)
        response = httpx.get(f"{server.url}/api/v1/uploads/{url.rsplit('/', 1)[1]}/content", timeout=30)
        assert response.status_code == 503
        assert response.json()["code"] == "storage.unavailable"
    finally:
        server.stop()


def test_a_storage_folder_that_vanishes_is_a_503_not_a_500(tmp_path: Path) -> None:
    server = start_server(tmp_path / "server", UPLOADER_STORAGE_URL=(tmp_path / "volume").as_uri())
    try:
        shutil.rmtree(tmp_path / "volume")  # as an unmounted volume would look
        url = create(server.tus_url, 5)
        response = httpx.patch(url, content=b"hello", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "storage.unavailable"
        assert httpx.get(f"{server.url}/readyz").status_code == 503
        assert head_offset(url) == 0
        assert "request.failed" not in server.log()
    finally:
        server.stop()
