#!/usr/bin/env python3
"""S3 benchmark: our server with the S3 backend against boto3 and @tus/server's S3 store.

All three write the same file to the same moto S3 server (the peers' one on port 15000,
bucket ``peer``), alternating, in one run:

- ``boto3.upload_file`` (multipart, its default 8 MiB parts, as ours): what a plain S3
  client achieves;
- ``@tus/server`` with ``@tus/s3-store`` (8 MiB parts, as the peer is set up) through tus;
- ours, ``UPLOADER_STORAGE_URL=s3://peer/...`` with its defaults (8 MiB parts), through tus.

Then our server's peak RSS while it takes a 1 GiB upload to S3. Usage:

    python tests/bench/bench_s3.py [--size-mib 512] [--repeats 3] [--rss-mib 1024]
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import httpx
from boto3.s3.transfer import TransferConfig
from common import random_file

REPO = Path(__file__).resolve().parents[2]
BENCH = Path(os.environ.get("UPLOADER_PEERS_BENCH_DIR", REPO.parent / "shared" / "bench"))
PEERS_DIR = Path(os.environ.get("PEERS_DIR", "/tmp/uploader-peers"))
S3_ENDPOINT = "http://127.0.0.1:15000"
BUCKET = "peer"
NODE_S3 = "http://127.0.0.1:18082/files/"
OURS_PORT = 18092
MiB = 1024 * 1024
PART_SIZE = 8 * MiB  # our default and boto3's: a like-for-like comparison
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def s3() -> Any:
    return boto3.client(
        "s3",
        endpoint_url=S3_ENDPOINT,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def port_open(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
    except httpx.HTTPError:
        return False
    return True


def ensure_peers() -> None:
    if port_open(15000) and port_open(18082):
        return
    if not (PEERS_DIR / "venv").exists():
        subprocess.run(["bash", str(BENCH / "peers" / "setup.sh")], check=True)
    subprocess.run(["bash", str(BENCH / "peers" / "start.sh")], check=True)


def empty_bucket() -> None:
    """Between runs: no object and no open multipart upload is left to slow moto down."""
    client = s3()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=item["Key"])
    for upload in client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []):
        client.abort_multipart_upload(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"])


def tusbench(endpoint: str, path: Path, chunk_mib: int, pid: int | None = None) -> dict[str, float]:
    argv = [sys.executable, str(BENCH / "tusbench.py"), endpoint, str(path), str(chunk_mib)]
    if pid:
        argv += ["--pid", str(pid)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=900).stdout
    return {k: float(v) for k, v in re.findall(r"(mib_s|peak_rss_mib)=([\d.]+)", out)}


def boto3_upload(path: Path) -> dict[str, float]:
    config = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE)
    started = time.perf_counter()
    s3().upload_file(str(path), BUCKET, f"boto3-{secrets.token_hex(4)}", Config=config)
    return {"mib_s": path.stat().st_size / MiB / (time.perf_counter() - started)}


class OurServer:
    def __init__(self) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="uploader-bench-s3-"))
        env = {
            **os.environ,
            **CREDENTIALS,
            "UPLOADER_DATA_DIR": str(self.data_dir),
            "UPLOADER_STORAGE_URL": f"s3://{BUCKET}/ours-{secrets.token_hex(4)}",
            "UPLOADER_S3_ENDPOINT_URL": S3_ENDPOINT,
            "UPLOADER_S3_PART_SIZE": str(PART_SIZE),
            "UPLOADER_LOG_LEVEL": "warning",
        }
        command = shutil.which("uploader", path=str(Path(sys.executable).parent)) or "uploader"
        self.process = subprocess.Popen(
            [command, "serve", "--host", "127.0.0.1", "--port", str(OURS_PORT)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not port_open(OURS_PORT):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("our server did not start")
            time.sleep(0.1)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{OURS_PORT}/files/"

    def upload(self, path: Path, chunk_mib: int) -> dict[str, float]:
        """One timed upload, then wait for its processing (which reads the object back) to
        end, so that it does not slow the next measurement of any server."""
        result = tusbench(self.endpoint, path, chunk_mib, self.process.pid)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            newest = httpx.get(f"http://127.0.0.1:{OURS_PORT}/api/v1/uploads?limit=1").json()["items"]
            if not newest or newest[0]["state"] in ("ready", "failed"):
                break
            time.sleep(0.2)
        return result

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        shutil.rmtree(self.data_dir, ignore_errors=True)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rss-mib", type=int, default=1024, help="0 skips the RSS check")
    args = parser.parse_args()
    ensure_peers()
    node_pid = int((PEERS_DIR / "node-s3.pid").read_text())
    path = random_file(args.size_mib)
    ours = OurServer()
    runs: dict[str, list[dict[str, float]]] = {}
    contenders: list[tuple[str, Callable[[], dict[str, float]]]] = [
        ("boto3 upload_file (8 MiB parts)", lambda: boto3_upload(path)),
        ("@tus/server s3-store, 64 MiB chunks", lambda: tusbench(NODE_S3, path, 64, node_pid)),
        ("@tus/server s3-store, one PATCH", lambda: tusbench(NODE_S3, path, args.size_mib, node_pid)),
        ("uploader, 64 MiB chunks", lambda: ours.upload(path, 64)),
        ("uploader, one PATCH", lambda: ours.upload(path, args.size_mib)),
    ]
    try:
        for round_ in range(args.repeats):
            # Rotate the order each round so that drift in the machine hits everyone alike.
            shift = round_ % len(contenders)
            for name, run in contenders[shift:] + contenders[:shift]:
                empty_bucket()
                result = run()
                runs.setdefault(name, []).append(result)
                print(f"[s3 bench] {name:38} {result['mib_s']:7.1f} MiB/s", file=sys.stderr)
    finally:
        ours.stop()
        empty_bucket()
    table = {name: median([r["mib_s"] for r in results]) for name, results in runs.items()}
    boto = table["boto3 upload_file (8 MiB parts)"]
    node = table["@tus/server s3-store, 64 MiB chunks"]
    print(f"### {args.size_mib} MiB to moto's S3 server, median of {args.repeats}\n")
    print("| client / server | MiB/s | vs boto3 | vs @tus/server s3-store (64 MiB chunks) |")
    print("|---|---|---|---|")
    for name, value in table.items():
        print(f"| {name} | {value:.1f} | {value / boto:.2f}x | {value / node:.2f}x |")
    if args.rss_mib:
        big = random_file(args.rss_mib)
        server = OurServer()
        try:
            result = tusbench(server.endpoint, big, 64, server.process.pid)
        finally:
            server.stop()
            empty_bucket()
        print(
            f"\nOur server's peak RSS during a {args.rss_mib} MiB upload to S3 (64 MiB chunks): "
            f"{result.get('peak_rss_mib', float('nan')):.0f} MiB at {result['mib_s']:.1f} MiB/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
