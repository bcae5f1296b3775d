#!/usr/bin/env python3
"""Instructions per upload: what a configuration of our server costs, counted, not timed.

On a shared two-core machine, uploads per second and CPU seconds move with the machine's
speed, from one round to the next, by more than a cost of a few percent. This benchmark
runs ``uploader serve`` under valgrind's cachegrind (instructions counted, no cache
simulated), sends it many small tus uploads with ``tusload.py`` (of ../shared/bench),
waits until the server is idle (work that lags behind the last answer, such as webhook
deliveries, counts), and stops it.

Each configuration runs twice, with ``--warmup`` uploads and with ``--warmup`` plus
``--uploads``; the difference, divided by ``--uploads``, is the server process's
instructions per upload, start-up and warm-up left out. Counted: user-space
instructions of the server process (its threads too). Not counted: the kernel's work for
its system calls, and other processes (the receiver, the load client).

    python tests/bench/bench_instructions.py \\
        --variant "webhooks:UPLOADER_WEBHOOK_URL={webhook_sink},UPLOADER_WEBHOOK_SECRET=x"

``--variant`` is as in ``bench_tus.py`` (``{webhook_sink}`` names a receiver the run
starts, answering 204 at once). Needs valgrind (``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_tus import Variant, cpu_seconds, log, parse_variant, port_open, start_webhook_sink, wait_until

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
INSTRUCTIONS = re.compile(r"I\s+refs:\s+([\d,]+)")


def counted_run(env: dict[str, str], uploads: int, args: argparse.Namespace, work: Path, tag: str) -> int:
    """Instructions of one server's life, from its start to its stop, with ``uploads``."""
    data_dir = work / f"data-{tag}"
    valgrind_log = work / f"valgrind-{tag}.log"
    command = [
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=no",
        "--cachegrind-out-file=/dev/null",
        f"--log-file={valgrind_log}",
        sys.executable,
        str(Path(sys.executable).with_name("uploader")),
        "serve",
        "--host",
        HOST,
        "--port",
        str(args.port),
    ]
    server_env = {
        **os.environ,
        "UPLOADER_DATA_DIR": str(data_dir),
        "UPLOADER_LOG_LEVEL": "warning",
        "PYTHONHASHSEED": "0",
        **env,
    }
    with (work / f"server-{tag}.log").open("wb") as out:
        server = subprocess.Popen(command, env=server_env, stdout=out, stderr=out)
    try:
        wait_until(lambda: port_open(args.port), 300, tag, alive=lambda: server.poll() is None)
        load = subprocess.run(
            [
                sys.executable,
                str(args.peers_bench_dir / "tusload.py"),
                "--uploads",
                str(uploads),
                "--size-kib",
                str(args.size_kib),
                "--concurrency",
                str(args.concurrency),
                f"http://{HOST}:{args.port}/files/",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if load.returncode != 0 or " errors=0 " not in load.stdout:
            raise SystemExit(f"{tag}: the load failed: {load.stdout[-500:]}{load.stderr[-500:]}")
        # Idle: under 20 ms of CPU in a second (deliveries that lag behind count).
        deadline = time.monotonic() + 300
        while True:
            before = cpu_seconds([server.pid])
            time.sleep(1.0)
            if cpu_seconds([server.pid]) - before < 0.02:
                break
            if time.monotonic() > deadline:
                log(f"{tag}: still busy after 300 s, counting anyway")
                break
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(120)
    found = INSTRUCTIONS.search(valgrind_log.read_text())
    if found is None:
        raise SystemExit(f"{tag}: no instruction count in {valgrind_log}")
    return int(found.group(1).replace(",", ""))


def expand(env: tuple[str, ...], sink_url: str) -> dict[str, str]:
    return dict(item.replace("{webhook_sink}", sink_url).split("=", 1) for item in env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--uploads", type=int, default=250, help="uploads counted (default 250)")
    ap.add_argument("--warmup", type=int, default=50, help="uploads left out (default 50)")
    ap.add_argument("--size-kib", type=int, default=256)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--port", type=int, default=18390)
    ap.add_argument("--variant", dest="extra_variants", type=parse_variant, action="append", default=[])
    ap.add_argument(
        "--peers-bench-dir",
        type=Path,
        default=Path(os.environ.get("UPLOADER_PEERS_BENCH_DIR", REPO.parent / "shared" / "bench")),
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    args.variants = [
        Variant("ours", "uploader (ours)"),
        *(Variant(f"ours-{n}", label, env) for n, (label, env) in enumerate(args.extra_variants, 1)),
    ]
    work = Path(tempfile.mkdtemp(prefix="bench-instructions-"))
    sink = start_webhook_sink(args, work)  # only when a variant names {webhook_sink}
    results: dict[str, float] = {}
    try:
        for index, variant in enumerate(args.variants):
            label = variant.label
            counts = []
            for uploads in (args.warmup, args.warmup + args.uploads):
                started = time.monotonic()
                counts.append(
                    counted_run(
                        expand(variant.env, args.webhook_sink_url), uploads, args, work, f"{index}-{uploads}"
                    )
                )
                took = time.monotonic() - started
                log(f"{label}: {uploads} uploads, {counts[-1]:,} instructions ({took:.0f} s)")
            results[label] = (counts[1] - counts[0]) / args.uploads
            log(f"{label}: {results[label]:,.0f} instructions per upload")
    finally:
        if sink is not None:
            sink.terminate()
            sink.wait(10)
    first = next(iter(results.values()))
    shape = f"{args.uploads} x {args.size_kib} KiB, {args.concurrency} at once"
    print(f"\n### Instructions per upload: {shape}\n")
    print("| server | instructions per upload | vs first |")
    print("|---|---|---|")
    for label, per_upload in results.items():
        print(f"| {label} | {per_upload / 1e6:.2f} M | {per_upload / first:.3f}x |")
    if args.json:
        args.json.write_text(json.dumps({"per_upload": results, "uploads": args.uploads}, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
