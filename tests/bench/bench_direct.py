#!/usr/bin/env python3
"""Direct uploads to S3 against a plain S3 client, and what they cost the API process.

The same file goes to the same moto S3 server (the peers' one on port 15000, bucket
``peer``), alternating, in one run:

- ``boto3.upload_file``, multipart with 8 MiB parts and 4 parts in flight, without part
  checksums as the plugin sends none (the baseline), and with boto3's default CRC32s
  (moto completes an upload whose parts carry checksums without re-reading them, so
  that row says what moto's completion costs, not what the client does);
- a direct upload through our Companion-compatible routes, driven as ``@uppy/aws-s3``
  drives it (create, then for each part: sign here and PUT to S3; then complete), 8 MiB
  parts, 4 in flight;
- a tus upload of the same file to our server (one PATCH), for the API process's CPU.

For ours it reads the server process's CPU time (user + system) across each upload
alone, processing excluded (the run waits for it to end before the next measurement).

    python tests/bench/bench_direct.py [--size-mib 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
import httpx
from bench_s3 import BUCKET, CREDENTIALS, PART_SIZE, S3_ENDPOINT, empty_bucket, ensure_peers, tusbench
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from common import OurServer, random_file

MiB = 1024 * 1024
IN_FLIGHT = 4
PORT = 18093


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def boto3_upload(path: Path, checksums: bool) -> float:
    config = TransferConfig(
        multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE, max_concurrency=IN_FLIGHT
    )
    client = boto3.client(
        "s3",
        endpoint_url=S3_ENDPOINT,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(request_checksum_calculation="when_supported" if checksums else "when_required"),
    )
    started = time.perf_counter()
    client.upload_file(str(path), BUCKET, f"boto3-{secrets.token_hex(4)}", Config=config)
    return time.perf_counter() - started


def direct_upload(api: str, path: Path) -> tuple[float, str]:
    """As the plugin does it: seconds, and the upload's id."""
    size = path.stat().st_size
    count = -(-size // PART_SIZE)
    started = time.perf_counter()
    limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
    with httpx.Client(timeout=120) as client, httpx.Client(timeout=120, limits=limits) as bucket:
        created = client.post(
            f"{api}/s3/multipart", json={"filename": path.name, "type": "application/octet-stream"}
        ).json()
        key, multipart_id = created["key"], created["uploadId"]

        def send(number: int) -> dict[str, Any]:
            with open(path, "rb") as source:
                source.seek((number - 1) * PART_SIZE)
                data = source.read(PART_SIZE)
            signed = client.get(f"{api}/s3/multipart/{multipart_id}/{number}", params={"key": key})
            signed.raise_for_status()
            stored = bucket.put(signed.json()["url"], content=data)  # kept-alive, as a browser's
            stored.raise_for_status()
            return {"PartNumber": number, "ETag": stored.headers["etag"]}

        with concurrent.futures.ThreadPoolExecutor(IN_FLIGHT) as pool:
            parts = list(pool.map(send, range(1, count + 1)))
        done = client.post(
            f"{api}/s3/multipart/{multipart_id}/complete", params={"key": key}, json={"parts": parts}
        )
        done.raise_for_status()
    return time.perf_counter() - started, str(created["upload_id"])


def wait_processed(api: str, upload_id: str | None = None) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        items = httpx.get(f"{api}/api/v1/uploads?limit=1").json()["items"]
        newest = items[0] if items else None
        if newest is None or (newest["state"] in ("ready", "failed") and upload_id in (None, newest["id"])):
            return
        time.sleep(0.2)
    raise SystemExit("processing did not end")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ensure_peers()
    path = random_file(args.size_mib)
    gib = path.stat().st_size / 1024 / MiB
    os.environ.update(CREDENTIALS)
    server = OurServer(
        PORT,
        Path(tempfile.mkdtemp(prefix="uploader-bench-direct-")),
        UPLOADER_STORAGE_URL=f"s3://{BUCKET}/direct-{secrets.token_hex(4)}",
        UPLOADER_S3_ENDPOINT_URL=S3_ENDPOINT,
        UPLOADER_S3_PART_SIZE=str(PART_SIZE),
        **CREDENTIALS,
    )
    rows: dict[str, list[float]] = {
        "boto3": [],
        "boto3_crc": [],
        "direct": [],
        "direct_cpu": [],
        "tus_cpu": [],
        "tus": [],
    }
    try:
        for round_ in range(args.repeats):
            empty_bucket()
            rows["boto3"].append(path.stat().st_size / MiB / boto3_upload(path, checksums=False))
            empty_bucket()
            rows["boto3_crc"].append(path.stat().st_size / MiB / boto3_upload(path, checksums=True))
            empty_bucket()
            before = cpu_seconds(server.pid)
            seconds, upload_id = direct_upload(server.url, path)
            rows["direct_cpu"].append((cpu_seconds(server.pid) - before) / gib)
            rows["direct"].append(path.stat().st_size / MiB / seconds)
            wait_processed(server.url, upload_id)
            empty_bucket()
            before = cpu_seconds(server.pid)
            rows["tus"].append(tusbench(f"{server.url}/files/", path, args.size_mib)["mib_s"])
            rows["tus_cpu"].append((cpu_seconds(server.pid) - before) / gib)
            wait_processed(server.url)
            print(
                f"round {round_ + 1}/{args.repeats}: boto3 {rows['boto3'][-1]:.1f} MiB/s "
                f"({rows['boto3_crc'][-1]:.1f} with CRC32s), "
                f"direct {rows['direct'][-1]:.1f} MiB/s ({rows['direct_cpu'][-1]:.2f} s CPU/GiB), "
                f"tus {rows['tus'][-1]:.1f} MiB/s ({rows['tus_cpu'][-1]:.2f} s CPU/GiB)",
                flush=True,
            )
    finally:
        server.stop()
        empty_bucket()
    med = {name: statistics.median(values) for name, values in rows.items()}
    print(f"\n{args.size_mib} MiB to moto, 8 MiB parts, {IN_FLIGHT} in flight, median of {args.repeats}\n")
    print("| client | MiB/s | vs boto3 | API CPU s/GiB |")
    print("|---|---|---|---|")
    print(f"| boto3.upload_file, no part checksums (as the plugin) | {med['boto3']:.1f} | 1.00x | - |")
    print(
        f"| boto3.upload_file, CRC32 per part | {med['boto3_crc']:.1f} "
        f"| {med['boto3_crc'] / med['boto3']:.2f}x | - |"
    )
    print(
        f"| direct, as @uppy/aws-s3 | {med['direct']:.1f} | {med['direct'] / med['boto3']:.2f}x "
        f"| {med['direct_cpu']:.3f} |"
    )
    print(f"| tus, one PATCH | {med['tus']:.1f} | {med['tus'] / med['boto3']:.2f}x | {med['tus_cpu']:.3f} |")
    print(f"\nAPI CPU of a direct upload: {med['direct_cpu'] / med['tus_cpu']:.3f} of a tus upload's")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
