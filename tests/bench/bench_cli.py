#!/usr/bin/env python3
"""Client benchmark: ``uploader upload`` against tus-js-client under Node, same server, same file.

One fresh ``uploader serve`` (embedded default, local folder); a 1 GiB file uploaded with
the same chunk size by both clients, alternating, every upload deleted after its run.
Needs ``npm ci --prefix tests/js`` (``tests/run`` does it).

Usage: python tests/bench/bench_cli.py [--size-mib 1024] [--chunk-mib 8] [--repeats 3]
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

REPO = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
PORT = 18099


def timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{command[0]} failed: {result.stderr[-2000:]}")
    return time.perf_counter() - started, result.stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--chunk-mib", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    path = Path(f"/tmp/tus-bench-{args.size_mib}MiB.bin")
    if not path.exists() or path.stat().st_size != args.size_mib * MiB:
        with open(path, "wb") as out:
            for _ in range(args.size_mib):
                out.write(os.urandom(MiB))
    uploader = str(Path(sys.executable).parent / "uploader")
    server_url = f"http://127.0.0.1:{PORT}"
    with tempfile.TemporaryDirectory(prefix="uploader-cli-bench-") as work:
        env = {**os.environ, "UPLOADER_DATA_DIR": work, "UPLOADER_LOG_LEVEL": "warning"}
        server = subprocess.Popen([uploader, "serve", "--port", str(PORT)], env=env)
        client_env = {**os.environ, "UPLOADER_URL": server_url, "XDG_CACHE_HOME": f"{work}/cache"}
        clients = {
            "uploader upload": [uploader, "upload", str(path), "--chunk-size", f"{args.chunk_mib}MiB"],
            "tus-js-client (Node)": [
                "node",
                str(REPO / "tests" / "js" / "tus_upload.mjs"),
                f"{server_url}/files/",
                str(path),
                "--chunk-size",
                str(args.chunk_mib * MiB),
            ],
        }
        try:
            _wait_for(f"{server_url}/healthz")
            results: dict[str, list[float]] = {name: [] for name in clients}
            for repeat in range(args.repeats):
                for name, command in clients.items():
                    os.sync()
                    seconds, url = timed(command, client_env)
                    httpx.delete(url, headers={"Tus-Resumable": "1.0.0"})
                    results[name].append(args.size_mib / seconds)
                    print(f"  run {repeat + 1}: {name:22} {results[name][-1]:7.1f} MiB/s", file=sys.stderr)
        finally:
            server.terminate()
            server.wait(30)
    ours, node = (statistics.median(results[name]) for name in clients)
    print(f"\n{args.size_mib} MiB, {args.chunk_mib} MiB chunks, local folder, median of {args.repeats}:")
    print("| client | MiB/s | ratio |")
    print("|---|---|---|")
    print(f"| `uploader upload` | {ours:.0f} | {ours / node:.2f}x |")
    print(f"| tus-js-client under Node | {node:.0f} | 1.00x |")
    return 0


def _wait_for(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer")


if __name__ == "__main__":
    raise SystemExit(main())
