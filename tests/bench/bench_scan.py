#!/usr/bin/env python3
"""Malware scanning benchmark: our scan step against ``clamdscan --stream``, in one run.

Both send the same file to the same clamd (Debian's, on a signature database that knows
the EICAR test file, with ``StreamMaxLength`` raised above the file's size) with
``INSTREAM``, and wait for its verdict:

- ours: the pipeline's scan step (``ScanStep.run``), streaming the upload from the local
  store, as a worker does;
- clamdscan: ClamAV's own client, ``clamdscan --stream --no-summary FILE``, on the same
  clamd.

Usage: python tests/bench/bench_scan.py [--size-mib 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository's tests package

from common import quiet_step_context

from tests.scanning import ClamdServer
from uploader.db.models import Upload
from uploader.processing.clamav import Clamd
from uploader.processing.steps.scan import ScanStep
from uploader.storage.local import LocalStore

KEY = "0123456789abcdef0123456789abcdef"


async def ours(store: LocalStore, url: str, length: int) -> float:
    step = ScanStep(Clamd(url), "reject")
    upload = Upload(id=KEY, owner="bench", storage_key=KEY, length=length, offset=length)

    context = quiet_step_context(store)
    started = time.perf_counter()
    result = await step.run(upload, context)
    elapsed = time.perf_counter() - started
    assert result.detail == "clean", result
    return elapsed


def clamdscan(config: Path, path: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        ["clamdscan", f"--config-file={config}", "--stream", "--no-summary", str(path)],
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0 or not done.stdout.strip().endswith(": OK"):
        raise RuntimeError(done.stdout + done.stderr)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if shutil.which("clamdscan") is None:
        print("clamdscan is needed (Debian's clamdscan package)", file=sys.stderr)
        return 2
    size = args.size_mib * 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="bench-scan-") as scratch:
        root = Path(scratch)
        clamd = ClamdServer(root / "clamd", stream_max_bytes=size + 1024 * 1024)
        print(f"starting clamd; writing a {args.size_mib} MiB file ...", file=sys.stderr)
        clamd.start()
        try:
            store = LocalStore(root / "files", 4 * 1024 * 1024)
            path = root / "files" / KEY[:2] / KEY
            path.parent.mkdir(parents=True)
            with path.open("wb") as out:
                for _ in range(args.size_mib):
                    out.write(os.urandom(1024 * 1024))
            runs: dict[str, list[float]] = {"ours": [], "clamdscan": []}
            for repeat in range(args.repeats):
                runs["ours"].append(asyncio.run(ours(store, clamd.url, size)))
                runs["clamdscan"].append(clamdscan(clamd.config, path))
                print(
                    f"  run {repeat + 1}: ours {runs['ours'][-1]:.3f} s, "
                    f"clamdscan {runs['clamdscan'][-1]:.3f} s",
                    file=sys.stderr,
                )
        finally:
            clamd.stop()
    rate = {name: args.size_mib / statistics.median(times) for name, times in runs.items()}
    print(f"\n{args.size_mib} MiB of random bytes through clamd (INSTREAM), median of {args.repeats}:")
    print("| | MiB/s | ratio |")
    print("|---|---|---|")
    ratio = rate["ours"] / rate["clamdscan"]
    print(f"| ours (the scan step, from the local store) | {rate['ours']:.0f} | {ratio:.2f}x |")
    print(f"| `clamdscan --stream` | {rate['clamdscan']:.0f} | 1.00x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
