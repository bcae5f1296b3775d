#!/usr/bin/env python3
"""SSE latency benchmark: from an event leaving a Celery worker to an SSE client having it.

The full stack on this machine: ``uploader serve`` and ``uploader worker`` on PostgreSQL
and Redis (local storage), 100 clients following ``GET /api/v1/events`` (each sees
every event of every upload), while JPEGs are uploaded and processed. Every event
carries the time it was published (``at``); a client's latency is the time it read the
event minus that. Only events published by the worker count (processing steps, variants,
ready). Clients, API, worker, PostgreSQL and Redis share the machine's cores.

Usage: python tests/bench/bench_sse.py [--streams 100] [--uploads 40] [--parallel 4]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
from common import REDIS_URL, database_url, postgres_admin, uploader_executable, wait_for
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
PORT = 18095
WORKER_EVENTS = ("processing.", "variant.", "upload.ready", "upload.failed")


def picture(seed: int) -> bytes:
    image = Image.effect_noise((2400, 1600), 40 + seed % 20).convert("RGB")
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


async def follow(
    client: httpx.AsyncClient, latencies: list[float], ready: set[str], opened: asyncio.Event
) -> None:
    async with client.stream("GET", f"http://127.0.0.1:{PORT}/api/v1/events", timeout=None) as response:
        opened.set()
        event_type = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event_type = line[7:]
            elif line.startswith("data: "):
                received = time.time()
                if not event_type.startswith(WORKER_EVENTS):
                    continue
                data = json.loads(line[6:])
                latencies.append(received - datetime.fromisoformat(data["at"]).timestamp())
                if event_type == "upload.ready":
                    ready.add(data["upload_id"])


async def upload(client: httpx.AsyncClient, data: bytes, name: str) -> str:
    meta = f"filename {base64.b64encode(name.encode()).decode()}"
    created = await client.post(
        f"http://127.0.0.1:{PORT}/files/",
        headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(len(data)), "Upload-Metadata": meta},
    )
    url = created.headers["Location"]
    sent = await client.patch(
        url,
        content=data,
        headers={
            "Tus-Resumable": "1.0.0",
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        },
    )
    assert sent.status_code == 204, sent.text
    return str(url).rsplit("/", 1)[-1]


async def run(streams: int, uploads: int, parallel: int) -> dict[str, float]:
    latencies_by_stream: list[list[float]] = [[] for _ in range(streams)]
    ready_by_stream: list[set[str]] = [set() for _ in range(streams)]
    limits = httpx.Limits(max_connections=streams + parallel + 10)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        opened = [asyncio.Event() for _ in range(streams)]
        followers = [
            asyncio.create_task(follow(client, latencies_by_stream[i], ready_by_stream[i], opened[i]))
            for i in range(streams)
        ]
        await asyncio.gather(*(o.wait() for o in opened))
        pictures = [picture(i) for i in range(8)]
        slots = asyncio.Semaphore(parallel)
        started = time.perf_counter()

        async def one(i: int) -> str:
            async with slots:
                return await upload(client, pictures[i % len(pictures)], f"p{i}.jpg")

        ids = set(await asyncio.gather(*(one(i) for i in range(uploads))))
        deadline = time.monotonic() + 300
        while any(not ids <= ready for ready in ready_by_stream):
            if time.monotonic() > deadline:
                raise SystemExit("not every stream saw every upload become ready within 300 s")
            await asyncio.sleep(0.1)
        elapsed = time.perf_counter() - started
        for task in followers:
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
    latencies = sorted(value for values in latencies_by_stream for value in values)
    quantiles = statistics.quantiles(latencies, n=100)
    return {
        "deliveries": len(latencies),
        "p50_ms": quantiles[49] * 1000,
        "p95_ms": quantiles[94] * 1000,
        "p99_ms": quantiles[98] * 1000,
        "max_ms": latencies[-1] * 1000,
        "seconds": elapsed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--uploads", type=int, default=40)
    parser.add_argument("--parallel", type=int, default=4)
    args = parser.parse_args()
    database = f"uploader_bench_{secrets.token_hex(4)}"
    work = Path(tempfile.mkdtemp(prefix="uploader-sse-bench-"))
    postgres_admin(f'CREATE DATABASE "{database}"')
    env = {
        **os.environ,
        "UPLOADER_DATABASE_URL": database_url(database),
        "UPLOADER_DATA_DIR": str(work),
        "UPLOADER_REDIS_URL": REDIS_URL,
        "UPLOADER_REDIS_PREFIX": f"bench-{secrets.token_hex(4)}",
        "UPLOADER_PROCESSING": "celery",
        "UPLOADER_LOG_LEVEL": "warning",
    }
    command = uploader_executable()
    api = subprocess.Popen([command, "serve", "--port", str(PORT)], env=env, stderr=subprocess.DEVNULL)
    worker = subprocess.Popen([command, "worker", "--concurrency", "2"], env=env, stderr=subprocess.DEVNULL)
    try:
        wait_for(f"http://127.0.0.1:{PORT}/healthz")
        time.sleep(3)  # the worker connects to the broker
        result = asyncio.run(run(args.streams, args.uploads, args.parallel))
    finally:
        for process in (api, worker):
            process.terminate()
            process.wait(30)
        postgres_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"\n{args.streams} SSE streams, {args.uploads} JPEG uploads processed by one worker (2 processes), "
        f"{result['seconds']:.1f} s, {result['deliveries']} worker events delivered:"
    )
    print("| p50 | p95 | p99 | max |")
    print("|---|---|---|---|")
    print(
        f"| {result['p50_ms']:.1f} ms | {result['p95_ms']:.1f} ms | {result['p99_ms']:.1f} ms "
        f"| {result['max_ms']:.1f} ms |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
