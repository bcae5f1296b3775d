#!/usr/bin/env python3
"""Render benchmark, in one run:

- uncached: an upright 300 px wide WebP of a 24-megapixel JPEG (stored sideways, with an
  EXIF orientation), by ours as served (``GET …/render/w_300,f_webp,q_N`` of a ready
  upload, a new ``q_N`` each time so that nothing is cached: made from the upload's
  1024 px variant), by ours from the original (``render_one``: JPEG draft decoding, then
  a box reduce and a Lanczos pass), by Pillow's ``Image.open().thumbnail()`` (which
  decodes at a draft scale too) and by a full decode then resize, one image at a time;
- cached: requests per second that one ``uploader serve`` process answers for a render
  already made, from wrk (or, without it, a Python client) with keep-alive connections
  on the same machine.

Usage: python tests/bench/bench_renders.py [--images 4] [--requests 6000] [--connections 16]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from bench_variants import photo_like
from common import OurServer
from PIL import Image, ImageOps

from uploader.processing.images import render_one
from uploader.renders.signing import signed_url
from uploader.settings import Settings

KEY = "bench-render-key"


def ours(data: bytes) -> int:
    rendered, _, _ = render_one(data, "JPEG", (300, None), "contain", "webp", 80, Settings().image_max_pixels)
    return len(rendered)


def plain(data: bytes) -> int:
    """Pillow's own ``thumbnail()`` (which also decodes at a JPEG draft scale) to the same
    upright 300 px wide picture, then the EXIF orientation."""
    with Image.open(io.BytesIO(data)) as image:
        image.thumbnail((300 * image.width // image.height, 300))  # stored sideways: 300 tall
        upright = ImageOps.exif_transpose(image)
        out = io.BytesIO()
        upright.save(out, "WEBP", quality=80, method=4)
        return out.tell()


def full_decode(data: bytes) -> int:
    """The naive path: the whole picture decoded and turned upright, then resized."""
    with Image.open(io.BytesIO(data)) as image:
        upright = ImageOps.exif_transpose(image)
        small = upright.resize((300, 300 * upright.height // upright.width), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        small.save(out, "WEBP", quality=80, method=4)
        return out.tell()


def seconds_per_image(render: object, images: list[bytes]) -> float:
    assert callable(render)
    started = time.perf_counter()
    for data in images:
        render(data)
    return (time.perf_counter() - started) / len(images)


async def cached_rate(url: str, requests: int, connections: int) -> float:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        first = await client.get(url)
        first.raise_for_status()
        left = requests

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                answer = await client.get(url)
                if answer.status_code != 200:
                    raise SystemExit(f"render answered {answer.status_code}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        return requests / (time.perf_counter() - started)


def wrk_rate(url: str, connections: int) -> float:
    """Requests per second by wrk (Debian's), one thread: a client that costs the server's
    cores little, unlike one in Python."""
    httpx.get(url, timeout=60).raise_for_status()  # made and cached before the clock runs
    done = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", "-d8s", url], capture_output=True, text=True, check=True
    )
    found = re.search(r"Requests/sec:\s+([0-9.]+)", done.stdout)
    if found is None or " Non-2xx" in done.stdout:
        raise SystemExit(f"wrk: {done.stdout}")
    return float(found.group(1))


def ready_upload(base: str, photo: bytes) -> str:
    created = httpx.post(
        f"{base}/files/",
        content=photo,
        headers={
            "Tus-Resumable": "1.0.0",
            "Upload-Length": str(len(photo)),
            "Content-Type": "application/offset+octet-stream",
        },
        timeout=60,
    )
    upload_id = created.headers["Location"].rsplit("/", 1)[1]
    deadline = time.monotonic() + 60
    while httpx.get(f"{base}/api/v1/uploads/{upload_id}").json()["state"] != "ready":
        if time.monotonic() > deadline:
            raise SystemExit("a photo did not become ready")
        time.sleep(0.2)
    return upload_id


def served_seconds(base: str, uploads: list[str], rounds: int = 5) -> float:
    """Mean time of an uncached render as the server makes it, one request at a time: a new
    quality each round, so that every request renders."""
    with httpx.Client(timeout=60) as client:
        client.get(signed_url(KEY, uploads[0], "w_300,f_webp,q_99", base)).raise_for_status()  # warm-up
        started = time.perf_counter()
        for round_ in range(rounds):
            for upload_id in uploads:
                answer = client.get(signed_url(KEY, upload_id, f"w_300,f_webp,q_{80 + round_}", base))
                answer.raise_for_status()
        return (time.perf_counter() - started) / (rounds * len(uploads))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--port", type=int, default=18991)
    args = parser.parse_args()
    print(f"making {args.images} 24 MP JPEGs ...", file=sys.stderr)
    photos = [photo_like(seed) for seed in range(args.images)]
    ours(photos[0]), plain(photos[0]), full_decode(photos[0])  # warm-up
    mine, theirs = seconds_per_image(ours, photos), seconds_per_image(plain, photos)
    naive = seconds_per_image(full_decode, photos)
    with tempfile.TemporaryDirectory(prefix="bench-renders-") as scratch:
        server = OurServer(args.port, Path(scratch), UPLOADER_RENDER_KEY=KEY)
        try:
            uploads = [ready_upload(server.url, photo) for photo in photos]
            print("uncached renders through the server ...", file=sys.stderr)
            served = served_seconds(server.url, uploads)
            upload_id = uploads[0]
            url = signed_url(KEY, upload_id, "w_300,f_webp,q_80", server.url)
            print("requests of a cached render ...", file=sys.stderr)
            rate = (
                wrk_rate(url, args.connections)
                if shutil.which("wrk")
                else asyncio.run(cached_rate(url, args.requests, args.connections))
            )
        finally:
            server.stop()
    print(f"\nRenders of 24 MP JPEGs (mean of {args.images}) and of a cached render:")
    print("| | figure | ratio |")
    print("|---|---|---|")
    print(f"| uncached 300 px WebP, ours as served (from the variant) | {served * 1000:.1f} ms ", end="")
    print(f"| {served / theirs:.2f}x |")
    print(
        f"| uncached, ours from the original (`render_one`) | {mine * 1000:.0f} ms | {mine / theirs:.2f}x |"
    )
    print(f"| uncached, Pillow's `Image.open().thumbnail()` (draft too) | {theirs * 1000:.0f} ms | 1.00x |")
    print(f"| uncached, full decode then resize | {naive * 1000:.0f} ms | {naive / theirs:.2f}x |")
    print(f"| cached, one process, {args.connections} keep-alive connections | {rate:.0f} requests/s | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
