"""Connection limits, keep-alive and draining on a real server process."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.faults.clients import MiB, TricklingPatch, create, head_offset
from tests.faults.invariant import assert_invariant
from tests.observability.metrics import Scrape
from tests.support import LiveServer, start_server
from uploader.settings import Settings

pytestmark = pytest.mark.e2e


def _exchange(sock: socket.socket, path: str = "/healthz", close: bool = False) -> tuple[str, bytes]:
    """One GET on ``sock``; its head (lower-cased) and body."""
    connection = "close" if close else "keep-alive"
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: {connection}\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    text = head.decode("latin-1").lower()
    length = int(next(line.split(":")[1] for line in text.split("\r\n") if line.startswith("content-length")))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return text, body


def _connect(server: LiveServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def _closed(sock: socket.socket) -> bool:
    """The server closed ``sock`` (read gives end of file)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_connections_beyond_the_limit_get_503_with_retry_after_and_the_server_keeps_serving(
    tmp_path: Path,
) -> None:
    # Held connections stay open through the test's 20 refusals (about 10 s).
    server = start_server(tmp_path / "server", UPLOADER_MAX_CONNECTIONS="4", UPLOADER_KEEP_ALIVE_SECONDS="60")
    held: list[socket.socket] = []
    try:
        # httpx's health poll at start has closed; four connections now, each answered.
        for _ in range(4):
            sock = _connect(server)
            head, _ = _exchange(sock)
            assert head.startswith("http/1.1 200"), head
            held.append(sock)
        for _ in range(20):
            with _connect(server) as extra:
                head, body = _exchange(extra)
                assert head.startswith("http/1.1 503"), head
                assert "\r\nretry-after: 1" in head
                assert json.loads(body)["code"] == "service.busy"
                assert _closed(extra)
        head, body = _exchange(held[0], "/metrics")
        scraped = Scrape(body.decode())
        assert scraped.value("uploader_connections_refused_total") == 20
        assert scraped.value("uploader_connections_open") == 4
        for sock in held[2:]:
            sock.close()
        deadline = time.monotonic() + 5
        while True:  # the server sees the two closes shortly
            with _connect(server) as fresh:
                head, _ = _exchange(fresh, close=True)
            if head.startswith("http/1.1 200") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert head.startswith("http/1.1 200"), head
        assert server.process is not None
        assert server.process.poll() is None
        assert "Traceback" not in server.log()
    finally:
        for sock in held:
            sock.close()
        server.stop()


def test_an_idle_keep_alive_connection_is_closed_after_the_setting(tmp_path: Path) -> None:
    server = start_server(tmp_path / "server", UPLOADER_KEEP_ALIVE_SECONDS="1")
    try:
        with _connect(server) as sock:
            head, _ = _exchange(sock)
            assert head.startswith("http/1.1 200")
            sock.settimeout(4)  # the default (5 s) would still hold it open
            started = time.monotonic()
            assert _closed(sock)
            assert 0.5 < time.monotonic() - started < 3
    finally:
        server.stop()


def test_sigterm_makes_readyz_fail_at_once_while_in_flight_patches_drain(tmp_path: Path) -> None:
    data = os.urandom(6 * MiB)
    server = start_server(tmp_path / "server", UPLOADER_SHUTDOWN_DELAY_SECONDS="4")
    assert server.process is not None
    try:
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        url = create(server.tus_url, len(data))
        patching = TricklingPatch(url, data, rate=2 * MiB)  # about 3 s
        time.sleep(0.3)
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        ready = httpx.get(f"{server.url}/readyz", timeout=5)
        assert time.monotonic() - signalled < 1
        assert ready.status_code == 503
        assert ready.json()["status"] == "draining"
        assert ready.headers["retry-after"]
        # Still serving everything else while the load balancer takes note.
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        create(server.tus_url, 10)  # (a HEAD of the upload being sent would interrupt its PATCH)
        assert patching.wait(30) == 204, patching.error
        # Stopped cleanly (uvicorn ends by raising the signal it caught again).
        assert server.process.wait(30) in (0, -signal.SIGTERM)
        assert time.monotonic() - signalled >= 3.5  # it waited out the delay
        assert "server.draining" in server.log()
    finally:
        server.stop()
    server.start()  # the same data, a new process: the upload is whole
    try:
        assert head_offset(url) == len(data)
        assert_invariant(Settings(data_dir=server.data_dir), {url.rsplit("/", 1)[1]: [data]}, server.url)
    finally:
        server.stop()


def test_timed_out_headers_and_bodies_are_counted(tmp_path: Path) -> None:
    server = start_server(
        tmp_path / "server", UPLOADER_HEADER_TIMEOUT_SECONDS="1", UPLOADER_BODY_IDLE_TIMEOUT_SECONDS="1"
    )
    try:
        with _connect(server) as sock:  # headers that never end
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            assert _closed_after_answer(sock).startswith(b"HTTP/1.1 408")
        url = create(server.tus_url, 1000)
        with _connect(server) as sock:  # a body that stops arriving
            path = url.removeprefix(server.url)
            sock.sendall(
                f"PATCH {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
                "Content-Type: application/offset+octet-stream\r\nContent-Length: 1000\r\n\r\n".encode()
                + b"x" * 100
            )
            assert _closed_after_answer(sock).startswith(b"HTTP/1.1 408")
        scraped = Scrape(httpx.get(f"{server.url}/metrics").text)
        assert scraped.value("uploader_request_timeouts_total", phase="header") == 1
        assert scraped.value("uploader_request_timeouts_total", phase="body") == 1
        assert head_offset(url) == 100
    finally:
        server.stop()


def _closed_after_answer(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def test_a_scrape_answers_while_uploads_flood_the_server(tmp_path: Path) -> None:
    server = start_server(tmp_path / "server")
    data = os.urandom(4 * MiB)
    try:
        urls = [create(server.tus_url, len(data)) for _ in range(24)]
        patches = [TricklingPatch(url, data, rate=2 * MiB) for url in urls]  # 2 s each
        time.sleep(0.5)
        scrapes, in_flight = [], []
        for _ in range(5):
            started = time.monotonic()
            answer = httpx.get(f"{server.url}/metrics", timeout=5)
            scrapes.append(time.monotonic() - started)
            assert answer.status_code == 200
            in_flight.append(Scrape(answer.text).value("uploader_patches_in_flight"))
            time.sleep(0.05)
        assert max(scrapes) < 2, scrapes
        assert max(in_flight) >= 12, in_flight
        for patch in patches:
            assert patch.wait(60) == 204, patch.error
    finally:
        server.stop()
