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
import sys
import tempfile
from pathlib import Path

import httpx
from common import MiB, OurServer, random_file, timed, uploader_executable

REPO = Path(__file__).resolve().parents[2]
PORT = 18099


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--chunk-mib", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    path = random_file(args.size_mib)
    uploader = uploader_executable()
    with tempfile.TemporaryDirectory(prefix="uploader-cli-bench-") as work:
        server = OurServer(PORT, Path(work))
        server_url = server.url
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
            results: dict[str, list[float]] = {name: [] for name in clients}
            for repeat in range(args.repeats):
                for name, command in clients.items():
                    os.sync()
                    seconds, url = timed(command, client_env)
                    httpx.delete(url, headers={"Tus-Resumable": "1.0.0"})
                    results[name].append(args.size_mib / seconds)
                    print(f"  run {repeat + 1}: {name:22} {results[name][-1]:7.1f} MiB/s", file=sys.stderr)
        finally:
            server.stop()
    ours, node = (statistics.median(results[name]) for name in clients)
    print(f"\n{args.size_mib} MiB, {args.chunk_mib} MiB chunks, local folder, median of {args.repeats}:")
    print("| client | MiB/s | ratio |")
    print("|---|---|---|")
    print(f"| `uploader upload` | {ours:.0f} | {ours / node:.2f}x |")
    print(f"| tus-js-client under Node | {node:.0f} | 1.00x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
