#!/usr/bin/env python3
"""Video benchmark: the media step (ffprobe's facts and a poster frame rendered into the
four variants) on a 1-minute 1080p H.264 video with sound, made here by ffmpeg.

Worker time is the step's wall time, and the CPU time it costs: this process's (the
variants) and its ffprobe and ffmpeg children's. The target is under 3 s.

Usage: python tests/bench/bench_media.py [--seconds 60] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import quiet_step_context

from uploader.db.models import Upload
from uploader.processing.steps.media import MediaStep
from uploader.storage.local import LocalStore

KEY = "0123456789abcdef0123456789abcdef"


def make_video(path: Path, seconds: int) -> None:
    subprocess.run(
        [
            "ffmpeg", "-v", "error", "-y",
            "-f", "lavfi", "-i", f"testsrc2=duration={seconds}:size=1920x1080:rate=30",
            "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}",
            "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-g", "60",
            "-c:a", "aac", "-shortest", "-f", "mp4", str(path),
        ],
        check=True,
    )  # fmt: skip


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


async def one_run(store: LocalStore, length: int) -> tuple[float, float, dict[str, object]]:
    upload = Upload(
        id=KEY, owner="bench", storage_key=KEY, length=length, offset=length, detected_type="video/mp4"
    )

    context = quiet_step_context(store)
    cpu, started = cpu_seconds(), time.perf_counter()
    result = await MediaStep().run(upload, context)
    wall = time.perf_counter() - started
    return wall, cpu_seconds() - cpu, result.fields


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-media-") as scratch:
        root = Path(scratch)
        store = LocalStore(root / "files", 4 * 1024 * 1024)
        path = root / "files" / KEY[:2] / KEY
        path.parent.mkdir(parents=True)
        print(f"making a {args.seconds} s 1080p H.264 video with ffmpeg ...", file=sys.stderr)
        make_video(path, args.seconds)
        length = path.stat().st_size
        walls, cpus = [], []
        for repeat in range(args.repeats):
            wall, cpu, fields = asyncio.run(one_run(store, length))
            walls.append(wall)
            cpus.append(cpu)
            print(f"  run {repeat + 1}: {wall:.3f} s wall, {cpu:.3f} s CPU", file=sys.stderr)
        media = fields["media"]
        assert isinstance(media, dict)
    size = length / 1024 / 1024
    print(f"\n{args.seconds} s of 1080p30 H.264 + AAC ({size:.1f} MiB), median of {args.repeats}:")
    print("| the media step (probe, poster frame, 4 variants) | wall | CPU (ours + ffprobe + ffmpeg) |")
    print("|---|---|---|")
    print(f"| {media['video']} | {statistics.median(walls):.2f} s | {statistics.median(cpus):.2f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
