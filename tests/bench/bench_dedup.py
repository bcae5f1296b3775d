#!/usr/bin/env python3
"""Deduplication: what a hit costs, and what ``uploader upload --dedup`` takes end to end.

One server (the embedded default); the file is uploaded once, then:

- the hit itself: a tus creation declaring the file's ``Repr-Digest``, timed at the
  client over loopback (an upper bound of the server's time), median of ``--hits``;
- ``uploader upload --dedup FILE`` end to end, against ``sha256sum FILE``, alternating,
  median of ``--repeats`` (the file is in the page cache for both).

    python tests/bench/bench_dedup.py [--size-mib 1024] [--hits 50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from common import OurServer, random_file, timed, uploader_executable

PORT = 18095


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--hits", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    path = random_file(args.size_mib)
    size = path.stat().st_size
    print(f"hashing {path} once for the hits", flush=True)
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while block := source.read(4 << 20):
            digest.update(block)
    declared = f"sha-256=:{base64.b64encode(digest.digest()).decode()}:"
    server = OurServer(PORT, Path(tempfile.mkdtemp(prefix="uploader-bench-dedup-")))
    env = {**os.environ, "UPLOADER_URL": server.url, "XDG_CACHE_HOME": tempfile.mkdtemp()}
    try:
        print("uploading it once", flush=True)
        timed([uploader_executable(), "upload", "--watch", str(path)], env)
        headers = {"Tus-Resumable": "1.0.0", "Upload-Length": str(size), "Repr-Digest": declared}
        hits: list[float] = []
        with httpx.Client(timeout=30) as client:
            for _ in range(args.hits):
                started = time.perf_counter()
                created = client.post(f"{server.url}/files/", headers=headers)
                hits.append(time.perf_counter() - started)
                assert created.headers["Upload-Offset"] == str(size), created.headers
        cli: list[float] = []
        sha256sum: list[float] = []
        for round_ in range(args.repeats):
            seconds, _ = timed(["sha256sum", str(path)])
            sha256sum.append(seconds)
            seconds, _ = timed([uploader_executable(), "upload", "--dedup", str(path)], env)
            cli.append(seconds)
            print(f"round {round_ + 1}/{args.repeats}: sha256sum {sha256sum[-1]:.2f} s, cli {cli[-1]:.2f} s")
    finally:
        server.stop()
    hit_ms = statistics.median(hits) * 1000
    print(f"\n{args.size_mib} MiB file, median of {args.hits} hits and {args.repeats} rounds\n")
    print("| measure | figure |")
    print("|---|---|")
    print(
        f"| dedup hit, creation answered (client-side, loopback) | {hit_ms:.1f} ms (p95 "
        f"{sorted(hits)[int(0.95 * len(hits))] * 1000:.1f} ms) |"
    )
    print(f"| `sha256sum` | {statistics.median(sha256sum):.2f} s |")
    print(
        f"| `uploader upload --dedup` end to end | {statistics.median(cli):.2f} s "
        f"({statistics.median(cli) / statistics.median(sha256sum):.2f}x sha256sum) |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
