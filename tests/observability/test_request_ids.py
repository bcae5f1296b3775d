"""Request ids: taken from a sane ``X-Request-ID`` or made here, returned on every answer,
in every problem document and in the request's log lines; hostile values are replaced."""

from __future__ import annotations

import json
import logging
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import structlog

from tests.api.helpers import create, patch
from tests.support import TUS, in_process_client, start_server
from uploader.kit.logging import configure_logging
from uploader.settings import Settings

GENERATED = re.compile(r"[0-9a-f]{32}")


async def test_every_answer_carries_an_id_and_each_request_gets_its_own(
    app_client: httpx.AsyncClient,
) -> None:
    answers = [
        await app_client.post("/files/", headers={**TUS, "Upload-Length": "3"}),
        await app_client.options("/files/"),
        await app_client.get("/healthz"),
        await app_client.get("/api/v1/uploads"),
        await app_client.get("/nowhere"),
        await app_client.get("/metrics"),
    ]
    ids = [answer.headers["x-request-id"] for answer in answers]
    assert all(GENERATED.fullmatch(request_id) for request_id in ids), ids
    assert len(set(ids)) == len(ids)


async def test_a_sane_client_id_is_kept_and_is_in_the_problem_document(app_client: httpx.AsyncClient) -> None:
    for sane in ("7f3c9a2e-8b1d-4c55-9e0a-1b2c3d4e5f60", "Root=1-67891233-abcdef;Parent=53995c3f", "a"):
        answer = await app_client.head("/files/" + "0" * 32, headers={**TUS, "X-Request-ID": sane})
        assert answer.status_code == 404
        assert answer.headers["x-request-id"] == sane
    problem = await app_client.get("/api/v1/uploads/" + "0" * 32, headers={"X-Request-ID": "trace-me.42"})
    assert problem.status_code == 404
    assert problem.headers["x-request-id"] == "trace-me.42"
    assert problem.json()["request_id"] == "trace-me.42"
    assert problem.json()["code"] == "upload.not_found"


@pytest.mark.parametrize(
    "hostile",
    [
        b"x" * 10_000,  # 10 KB
        b"x" * 129,  # one over the bound
        "caf\u00e9-\u2603".encode(),  # not ASCII
        b"has space",
        b'quote"d',
        b"<script>",
        b"",
    ],
    ids=["10KB", "129", "non-ascii", "space", "quote", "markup", "empty"],
)
async def test_a_hostile_id_is_replaced_not_echoed(app_client: httpx.AsyncClient, hostile: bytes) -> None:
    answer = await app_client.head(
        "/files/" + "0" * 32, headers=[(b"Tus-Resumable", b"1.0.0"), (b"X-Request-ID", hostile)]
    )
    assert answer.status_code == 404
    assert GENERATED.fullmatch(answer.headers["x-request-id"])
    problem = await app_client.get("/api/v1/uploads/" + "0" * 32, headers=[(b"X-Request-ID", hostile)])
    assert GENERATED.fullmatch(problem.json()["request_id"])
    assert problem.json()["request_id"] == problem.headers["x-request-id"]


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("debug", json_lines=True)
    try:
        yield capsys
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)


async def test_the_id_is_in_every_log_line_of_its_request(
    tmp_path: Path, sqlite_url: str, json_logs: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(data_dir=tmp_path, database_url=sqlite_url, log_level="debug")
    async with in_process_client(settings) as client:
        json_logs.readouterr()
        path = await create(client, 4, **{"X-Request-ID": "create-1"})
        assert (await patch(client, path, 0, b"data", **{"X-Request-ID": "finish-2"})).status_code == 204
        lines = [json.loads(line) for line in json_logs.readouterr().err.splitlines() if line.startswith("{")]
    by_event = {line["event"]: line for line in lines}
    assert by_event["upload.created"]["request_id"] == "create-1"
    assert by_event["upload.received"]["request_id"] == "finish-2"
    # What the request caused in-process (the embedded pipeline) carries the id too.
    assert by_event["processing.ready"]["request_id"] == "finish-2"


def test_ids_with_line_breaks_are_replaced_on_a_real_server(tmp_path: Path) -> None:
    server = start_server(tmp_path / "server")
    try:
        for header in (b"X-Request-ID: abc\rinjected: 1", b"X-Request-ID: abc\r\n evil-fold"):
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                sock.sendall(
                    b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + header + b"\r\nConnection: close\r\n\r\n"
                )
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
            head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
            assert "injected" not in head
            assert "evil" not in head
            if head.startswith("http/1.1 200"):  # the parser took it: our id replaced it
                assert re.search(r"\r\nx-request-id: [0-9a-f]{32}\r\n", head + "\r\n"), head
            else:  # refused by the parser before any route
                assert head.startswith("http/1.1 400"), head
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    finally:
        server.stop()
