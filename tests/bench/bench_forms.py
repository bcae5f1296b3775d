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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

MiB = 1024 * 1024
TUS = ["-H", "Tus-Resumable: 1.0.0"]


class Server:
    def __init__(self, port: int, data_dir: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "UPLOADER_DATA_DIR": str(data_dir), "UPLOADER_LOG_LEVEL": "warning"}
        uploader = str(Path(sys.executable).parent / "uploader")
        self.process = subprocess.Popen([uploader, "serve", "--port", str(port)], env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
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


def timed(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, check=True, text=True)
    return time.perf_counter() - started, result.stdout


def form_upload(server: Server, path: Path) -> float:
    seconds, out = timed(["curl", "-sS", "--fail", "-F", f"file=@{path}", f"{server.url}/api/v1/uploads"])
    upload_id = httpx.Response(201, content=out).json()["uploads"][0]["id"]
    httpx.delete(f"{server.url}/files/{upload_id}", headers={"Tus-Resumable": "1.0.0"})
    return seconds


def tus_upload(server: Server, path: Path) -> float:
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
    path = Path(f"/tmp/tus-bench-{args.size_mib}MiB.bin")
    if not path.exists() or path.stat().st_size != args.size_mib * MiB:
        with open(path, "wb") as out:
            for _ in range(args.size_mib):
                out.write(os.urandom(MiB))
    with tempfile.TemporaryDirectory(prefix="uploader-forms-bench-") as work:
        servers = {
            "form": Server(18097, Path(work) / "form"),
            "tus": Server(18098, Path(work) / "tus"),
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
