#!/usr/bin/env python3
"""Image variant benchmark: our variants step against a plain Pillow loop, in one run.

Both make the same four variants (the default settings: longest side 256 and 1024
pixels, WebP and JPEG) of the same 24-megapixel JPEGs, in one process, one image at a
time:

- ours: ``uploader.processing.images.render_variants``, what the pipeline's variants step runs
  (decode once at the smallest JPEG draft scale, reduce, derive each size from the next
  larger one, apply the EXIF orientation, encode without metadata);
- plain: for each variant, ``Image.open(...)``, ``.thumbnail(...)``, ``ImageOps.exif_transpose``
  and ``save`` in the same format and quality.

Usage: python tests/bench/bench_variants.py [--images 6] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable

from PIL import Image, ImageDraw, ImageFilter, ImageOps

from uploader.processing.images import render_variants
from uploader.settings import DEFAULT_VARIANTS, Settings

WIDTH, HEIGHT = 6000, 4000  # 24 megapixels, as a typical APS-C camera


def photo_like(seed: int) -> bytes:
    """A 24 MP JPEG with gradients, shapes and grain, compressed like a camera's (q 92),
    with an EXIF orientation."""
    base = Image.linear_gradient("L").resize((WIDTH, HEIGHT))
    picture = Image.merge(
        "RGB", (base, base.rotate(90 + seed), base.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    )
    draw = ImageDraw.Draw(picture)
    for i in range(40):
        x, y = (i * 997 + seed * 131) % WIDTH, (i * 613 + seed * 71) % HEIGHT
        draw.ellipse(
            (x, y, x + 300 + i * 10, y + 200 + i * 7),
            fill=((i * 50) % 255, (i * 90) % 255, (seed * 40) % 255),
        )
    grain = Image.effect_noise((WIDTH, HEIGHT), 24).convert("RGB")
    picture = Image.blend(picture, grain, 0.15).filter(ImageFilter.SMOOTH)
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=92, exif=exif.tobytes())
    return out.getvalue()


def ours(data: bytes) -> int:
    _, variants = render_variants(data, "JPEG", DEFAULT_VARIANTS, Settings().image_max_pixels)
    return sum(len(v.data) for v in variants)


def plain(data: bytes) -> int:
    total = 0
    for spec in DEFAULT_VARIANTS:
        with Image.open(io.BytesIO(data)) as image:
            image.thumbnail((spec.size, spec.size))
            upright = ImageOps.exif_transpose(image)
            out = io.BytesIO()
            if spec.format == "webp":
                upright.save(out, "WEBP", quality=80, method=4)
            else:
                upright.convert("RGB").save(out, "JPEG", quality=85)
            total += out.tell()
    return total


def images_per_second(render: Callable[[bytes], int], images: list[bytes]) -> float:
    started = time.perf_counter()
    for data in images:
        render(data)
    return len(images) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"making {args.images} photo-like {WIDTH}x{HEIGHT} JPEGs ...", file=sys.stderr)
    images = [photo_like(seed) for seed in range(args.images)]
    size = statistics.mean(len(d) for d in images) / 1024 / 1024
    ours(images[0])  # warm-up: codecs loaded, caches filled
    plain(images[0])
    results: dict[str, list[float]] = {"ours": [], "plain": []}
    for repeat in range(args.repeats):
        for name, render in (("ours", ours), ("plain", plain)):
            rate = images_per_second(render, images)
            results[name].append(rate)
            print(f"  run {repeat + 1}: {name:5} {rate:6.2f} images/s", file=sys.stderr)
    mine, theirs = statistics.median(results["ours"]), statistics.median(results["plain"])
    print(f"\n24 MP JPEGs (mean {size:.1f} MiB), 4 variants each, one process, median of {args.repeats}:")
    print("| | images/s | ratio |")
    print("|---|---|---|")
    print(f"| ours (`render_variants`) | {mine:.2f} | {mine / theirs:.2f}x |")
    print(f"| plain `Image.open().thumbnail()` loop | {theirs:.2f} | 1.00x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
