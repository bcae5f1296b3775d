#!/usr/bin/env python3
"""Multipart form benchmark: ``curl -F`` against a tus upload of the same file in one PATCH.

Each method gets a fresh ``uploader serve`` (embedded default, local folder); runs
alternate between the two, and every upload is deleted after its run. The table shows
the median MiB/s and each server's peak RSS (VmHWM) after all its runs.

Usage: python tests/bench/bench_forms.py [--size-mib 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import httpx
from common import OurServer, random_file, timed

TUS = ["-H", "Tus-Resumable: 1.0.0"]


def form_upload(server: OurServer, path: Path) -> float:
    seconds, out = timed(["curl", "-sS", "--fail", "-F", f"file=@{path}", f"{server.url}/api/v1/uploads"])
    upload_id = httpx.Response(201, content=out).json()["uploads"][0]["id"]
    httpx.delete(f"{server.url}/files/{upload_id}", headers={"Tus-Resumable": "1.0.0"})
    return seconds


def tus_upload(server: OurServer, path: Path) -> float:
    size = path.stat().st_size
    created = httpx.post(
        f"{server.url}/files/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(size)}
    )
    location = created.headers["Location"]
    patch = ["curl", "-sS", "--fail", "-X", "PATCH", "-T", str(path), *TUS, "-H", "Upload-Offset: 0"]
    patch += ["-H", "Content-Type: application/offset+octet-stream", "-H", "Expect:", location]
    seconds, _ = timed(patch)
    httpx.delete(location, headers={"Tus-Resumable": "1.0.0"})
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    path = random_file(args.size_mib)
    with tempfile.TemporaryDirectory(prefix="uploader-forms-bench-") as work:
        servers = {
            "form": OurServer(18097, Path(work) / "form"),
            "tus": OurServer(18098, Path(work) / "tus"),
        }
        try:
            results: dict[str, list[float]] = {"form": [], "tus": []}
            for repeat in range(args.repeats):
                for name, run in (("form", form_upload), ("tus", tus_upload)):
                    os.sync()
                    rate = args.size_mib / run(servers[name], path)
                    results[name].append(rate)
                    print(f"  run {repeat + 1}: {name:4} {rate:7.1f} MiB/s", file=sys.stderr)
            peaks = {name: server.peak_rss_mib() for name, server in servers.items()}
        finally:
            for server in servers.values():
                server.stop()
    form, tus = statistics.median(results["form"]), statistics.median(results["tus"])
    print(f"\n{args.size_mib} MiB with curl, local folder, median of {args.repeats}:")
    print("| method | MiB/s | peak RSS | ratio |")
    print("|---|---|---|---|")
    print(f"| multipart form (`curl -F`) | {form:.0f} | {peaks['form']:.0f} MiB | {form / tus:.2f}x |")
    print(f"| tus, one PATCH (`curl -T`) | {tus:.0f} | {peaks['tus']:.0f} MiB | 1.00x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
