"""Helpers for tests: a real server process, tus requests, files."""

from __future__ import annotations

import base64
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from uploader.app import create_app
from uploader.settings import Settings

TUS = {"Tus-Resumable": "1.0.0"}
S3_TEST_BUCKET = "uploader-test"
S3_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
PATCH_HEADERS = {**TUS, "Content-Type": "application/offset+octet-stream"}
REPO = Path(__file__).resolve().parent.parent


def readme_function(opening: str, name: str) -> Any:
    """The function ``name`` of the README's Python snippet that begins with the line
    ``opening``, run as the README has it (so a test holds the README to the server)."""
    readme = (REPO / "README.md").read_text()
    block = re.search(rf"```python\n({re.escape(opening)}\n.*?def {name}\(.*?)```", readme, re.S)
    assert block is not None, f"the README's {name} snippet is gone"
    namespace: dict[str, object] = {}
    exec(block.group(1), namespace)
    function = namespace[name]
    assert callable(function)
    return function


def metadata(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, and SIGKILL if it has not ended within 30 s."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def uploader_command() -> list[str]:
    script = shutil.which("uploader", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "uploader"]


def spawn_uploader(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """``uploader ARGS`` as a child process, its output appended to ``log_path``."""
    with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([*uploader_command(), *args], env=env, stdout=log, stderr=subprocess.STDOUT)


@dataclass
class LiveServer:
    data_dir: Path
    port: int
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.data_dir / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def tus_url(self) -> str:
        return f"{self.url}/files/"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = spawn_uploader(
            ["serve", "--host", "127.0.0.1", "--port", str(self.port)], self.env, self.log_path
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("server did not start in 30 s")

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as in a crash."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        stop_process(self.process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(data_dir: Path, **env: str) -> LiveServer:
    full_env = {
        **os.environ,
        "UPLOADER_DATA_DIR": str(data_dir),
        "UPLOADER_LOG_LEVEL": "info",
        "UPLOADER_CHECKPOINT_BYTES": str(1024 * 1024),
        **env,
    }
    full_env.pop("UPLOADER_DATABASE_URL", None) if "UPLOADER_DATABASE_URL" not in env else None
    server = LiveServer(data_dir=data_dir, port=free_port(), env=full_env)
    server.start()
    return server


def random_file(path: Path, size: int) -> Path:
    with open(path, "wb") as out:
        remaining = size
        while remaining:
            block = os.urandom(min(remaining, 1024 * 1024))
            out.write(block)
            remaining -= len(block)
    return path


@asynccontextmanager
async def in_process_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, reached in-process through httpx."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


@dataclass
class MotoServer:
    process: subprocess.Popen[bytes]
    url: str

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def start_moto_server(log: Path | None = None) -> MotoServer:
    """moto's S3 over HTTP; its request log and tracebacks go to ``log`` when given."""
    port = free_port()
    with log.open("ab") if log is not None else open(os.devnull, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        process.kill()
        raise RuntimeError("moto server did not start")
    s3_client(url).create_bucket(Bucket=S3_TEST_BUCKET)
    return MotoServer(process, url)


def stored_objects(settings: Settings) -> list[str]:
    """Everything the storage holds for these settings: files, objects, open multipart uploads."""
    if settings.resolved_storage_url.startswith("file:"):
        root = settings.data_dir / "files"
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert settings.s3_endpoint_url is not None
    bucket, _, prefix = settings.resolved_storage_url.removeprefix("s3://").partition("/")
    client = s3_client(settings.s3_endpoint_url)
    objects = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    uploads = client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])
    return sorted([o["Key"] for o in objects] + [f"multipart:{u['Key']}" for u in uploads])


def s3_celery_env(
    database_url: str, redis_settings: dict[str, str], s3_endpoint: str, prefix: str
) -> dict[str, str]:
    """Settings of the full stack: PostgreSQL, Redis, S3 on moto's server under ``prefix``,
    processing by Celery workers."""
    return {
        **S3_TEST_ENV,
        **redis_settings,
        "UPLOADER_DATABASE_URL": database_url,
        "UPLOADER_STORAGE_URL": f"s3://{S3_TEST_BUCKET}/{prefix}",
        "UPLOADER_S3_ENDPOINT_URL": s3_endpoint,
        "UPLOADER_PROCESSING": "celery",
    }


def redis_env(redis_url: str) -> Iterator[dict[str, str]]:
    """Server settings for Redis with keys of the caller's own, removed afterwards."""
    import redis

    prefix = f"test-{secrets.token_hex(6)}"
    yield {"UPLOADER_REDIS_URL": redis_url, "UPLOADER_REDIS_PREFIX": prefix}
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}:*"))
    if keys:
        client.delete(*keys)


@dataclass
class WorkerProcess:
    """A real ``uploader worker`` (Celery, prefork) on the test's settings."""

    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    def start(self, concurrency: int = 1, *extra_args: str) -> None:
        args = ["worker", f"--concurrency={concurrency}", *extra_args]
        earlier = len(self.log())  # a restarted worker writes after its predecessor's lines
        self.process = spawn_uploader(args, self.env, self.log_path)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log()[-3000:]}")
            if "ready." in self.log()[earlier:]:
                return
            time.sleep(0.1)
        raise RuntimeError(f"worker did not start in 60 s: {self.log()[-3000:]}")

    def pool_processes(self) -> list[int]:
        """The pool's child processes: where tasks run."""
        assert self.process is not None
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [int(child) for child in children]

    def stop(self) -> None:
        stop_process(self.process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class WebhookReceiver:
    """An HTTP endpoint on loopback that records what it is sent. It can fail on purpose:
    answer 503 (``failures`` times, or while ``failing``), redirect (``redirect_to``),
    answer late (``answer_delay``), or be down altogether (``down``: nothing listens on
    its port until ``up``)."""

    def __init__(self, failures: int = 0) -> None:
        import http.server
        import threading

        self.received: list[tuple[dict[str, str], bytes]] = []
        self.attempts: list[tuple[dict[str, str], bytes]] = []  # refused ones too
        self.failures_left = failures
        self.failing = False
        self.redirect_to: str | None = None
        self.answer_delay = 0.0  # seconds between taking a delivery and answering it
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.attempts.append((dict(self.headers.items()), body))
                if receiver.redirect_to is not None:
                    self.send_response(307)
                    self.send_header("Location", receiver.redirect_to)
                elif receiver.failing or receiver.failures_left > 0:
                    receiver.failures_left -= 1
                    self.send_response(503)
                else:
                    receiver.received.append((dict(self.headers.items()), body))
                    time.sleep(receiver.answer_delay)
                    self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self._handler = Handler
        self._threading = threading
        self._http = http.server
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks"
        self._serve()

    def _serve(self) -> None:
        self.thread = self._threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def down(self) -> None:
        """Stop listening: deliveries get connection refused."""
        self.server.shutdown()
        self.server.server_close()

    def up(self) -> None:
        self.server = self._http.ThreadingHTTPServer(("127.0.0.1", self.port), self._handler)
        self._serve()

    def deliveries(self) -> list[tuple[str, dict[str, Any]]]:
        """What was taken, in arrival order: (X-Uploader-Delivery, payload)."""
        import json

        return [(headers["X-Uploader-Delivery"], json.loads(body)) for headers, body in self.received]

    def events(self) -> list[str]:
        import json

        return [json.loads(body)["type"] for _, body in self.received]

    def wait_for(self, types: set[str], seconds: float = 30) -> bool:
        """Whether deliveries of every one of ``types`` arrived within ``seconds``."""
        deadline = time.monotonic() + seconds
        while types - set(self.events()):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def assert_every_event_delivered(
    receiver: WebhookReceiver, expected: dict[str, list[str]], seconds: float = 60
) -> None:
    """Within ``seconds``, the receiver took every event of ``expected`` (upload id: its
    event types in the order they happened): each event under one delivery id (a
    redelivery repeats the id, never makes a new one), and each upload's events first
    arrived in their order. Deliveries of other uploads are not looked at."""
    deadline = time.monotonic() + seconds
    while True:
        by_upload: dict[str, dict[str, str]] = {}  # upload: delivery id -> type, first arrival order
        for delivery_id, payload in receiver.deliveries():
            if payload["upload_id"] in expected:
                assert payload["id"] == delivery_id, "the body's id is the header's"
                by_upload.setdefault(payload["upload_id"], {}).setdefault(delivery_id, payload["type"])
        arrived = {upload_id: list(ids.values()) for upload_id, ids in by_upload.items()}
        if all(len(arrived.get(u, [])) >= len(types) for u, types in expected.items()):
            break
        if time.monotonic() > deadline:
            missing = {u: types for u, types in expected.items() if arrived.get(u) != types}
            raise AssertionError(f"not delivered within {seconds} s: {missing}; arrived: {arrived}")
        time.sleep(0.05)
    for upload_id, types in expected.items():
        assert arrived[upload_id] == types, f"{upload_id}: {arrived[upload_id]} (one id per event, in order)"
