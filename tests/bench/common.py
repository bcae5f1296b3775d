"""What the benchmark scripts share: test files, our server as a process, timing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx

MiB = 1024 * 1024
ADMIN_DSN = os.environ.get("UPLOADER_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("UPLOADER_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def postgres_admin(sql: str) -> None:
    """One statement on the machine's PostgreSQL as its administrator (CREATE DATABASE)."""

    async def run() -> None:
        connection = await asyncpg.connect(ADMIN_DSN)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run())


def database_url(name: str) -> str:
    return ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"


def uploader_executable() -> str:
    return str(Path(sys.executable).parent / "uploader")


def random_file(size_mib: int) -> Path:
    """``/tmp/tus-bench-<n>MiB.bin`` of random bytes, made once and reused across runs."""
    path = Path(f"/tmp/tus-bench-{size_mib}MiB.bin")
    if not path.exists() or path.stat().st_size != size_mib * MiB:
        with open(path, "wb") as out:
            for _ in range(size_mib):
                out.write(os.urandom(MiB))
    return path


def wait_for(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer")


class OurServer:
    """``uploader serve`` on a port of loopback with extra settings, healthy once built."""

    def __init__(self, port: int, data_dir: Path, **settings: str) -> None:
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "UPLOADER_DATA_DIR": str(data_dir), "UPLOADER_LOG_LEVEL": "warning", **settings}
        self.process = subprocess.Popen([uploader_executable(), "serve", "--port", str(port)], env=env)
        wait_for(f"{self.url}/healthz")
        # `uploader serve` is the server itself (migrations ran in a child that has exited).
        self.pid = self.process.pid

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Seconds a command took, and what it printed; a failure ends the benchmark."""
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{command[0]} failed: {result.stderr[-2000:]}")
    return time.perf_counter() - started, result.stdout.strip()


def quiet_step_context(store: Any) -> Any:
    """What the pipeline hands a step, with progress reports going nowhere: for timing one
    step on its own."""
    from uploader.processing.steps.base import StepContext
    from uploader.settings import Settings

    async def progress(_: float) -> None:
        return None

    def throttled(_: int) -> Callable[[int], Awaitable[None]]:
        return lambda __: progress(0.0)

    return StepContext(settings=Settings(), store=store, progress=progress, throttled=throttled)
