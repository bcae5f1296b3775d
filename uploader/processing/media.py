"""Video and audio with Debian's ``ffprobe`` and ``ffmpeg``, run as subprocesses that read
the upload where it lies (a local file, or S3 through a short-lived presigned URL), so
nothing is downloaded whole first.

Each run is bounded: wall time (the process is killed), address space (``RLIMIT_AS``),
CPU time (``RLIMIT_CPU``) and what it may write back. A file ffprobe cannot make sense of
(truncated, empty, something else dressed as media) fails with ``media.unreadable``;
one whose frames are absurdly large with ``media.too_many_pixels``."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import resource
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from uploader.processing.images import RenderedVariant, Unrenderable, variants_of
from uploader.settings import VariantSpec

MAX_PROBE_OUTPUT = 4 * 1024 * 1024
MAX_POSTER_BYTES = 64 * 1024 * 1024  # a PNG of at most 2048 x 2048 pixels is far less
POSTER_BOX = 2048  # twice the default largest variant: the final resize keeps it sharp


class MediaRejected(Unrenderable):
    """ffprobe or ffmpeg could not read the file."""


@dataclass(frozen=True)
class Bounds:
    seconds: float  # wall time of one ffprobe or ffmpeg run
    memory_bytes: int  # its address space
    max_pixels: int  # a frame larger than this is refused before anything decodes it


async def _run(command: list[str], bounds: Bounds, output_limit: int) -> bytes:
    def limits() -> None:  # in the child, before it starts ffmpeg
        resource.setrlimit(resource.RLIMIT_AS, (bounds.memory_bytes, bounds.memory_bytes))
        cpu = math.ceil(bounds.seconds) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))

    try:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=limits,
        )
    except FileNotFoundError as exc:
        raise MediaRejected("media.unavailable", f"{command[0]} is not installed") from exc
    assert process.stdout is not None
    assert process.stderr is not None
    try:
        async with asyncio.timeout(bounds.seconds):
            output, errors = await asyncio.gather(
                _read_up_to(process.stdout, output_limit, command[0]), _read_up_to(process.stderr, 65536)
            )
            code = await process.wait()
    except TimeoutError as exc:
        raise MediaRejected("media.timeout", f"{command[0]} took over {bounds.seconds:g} s") from exc
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    if code != 0:
        reason = errors.decode("utf-8", "replace").strip().splitlines()
        raise MediaRejected("media.unreadable", (reason[-1] if reason else f"exit status {code}")[:500])
    return output


async def _read_up_to(stream: asyncio.StreamReader, limit: int, what: str | None = None) -> bytes:
    """Everything until the end, refusing more than ``limit`` bytes (``what``: by name;
    None: the rest is dropped unread)."""
    received = bytearray()
    while chunk := await stream.read(65536):
        if len(received) + len(chunk) > limit:
            if what is not None:
                raise MediaRejected("media.output_too_large", f"{what} wrote over {limit} bytes")
            continue
        received += chunk
    return bytes(received)


async def probe(source: str, bounds: Bounds) -> dict[str, Any]:
    """What ffprobe sees: the container, its streams, duration, bitrate; for ``media``."""
    command = ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams", source]
    try:
        found = json.loads(await _run(command, bounds, MAX_PROBE_OUTPUT))
    except json.JSONDecodeError as exc:
        raise MediaRejected("media.unreadable", "ffprobe's answer is not JSON") from exc
    container = found.get("format") or {}
    streams = found.get("streams") or []
    video = next((s for s in streams if s.get("codec_type") == "video" and not _is_cover(s)), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    if video is None and audio is None:
        raise MediaRejected("media.unreadable", "no video or audio stream")
    facts: dict[str, Any] = {
        "format": container.get("format_name"),
        "duration": _number(container.get("duration")),
        "bitrate": _integer(container.get("bit_rate")),
    }
    if video is not None:
        width, height = _integer(video.get("width")) or 0, _integer(video.get("height")) or 0
        if width <= 0 or height <= 0:
            raise MediaRejected("media.unreadable", f"a video of {width} x {height} pixels")
        if width * height > bounds.max_pixels:
            raise MediaRejected(
                "media.too_many_pixels",
                f"{width}x{height} frames, over the limit of {bounds.max_pixels} pixels",
            )
        facts["video"] = {
            "codec": video.get("codec_name"),
            "width": width,
            "height": height,
            "frame_rate": _rate(video.get("avg_frame_rate")) or _rate(video.get("r_frame_rate")),
            "rotation": _rotation(video),
        }
    if audio is not None:
        facts["audio"] = {
            "codec": audio.get("codec_name"),
            "sample_rate": _integer(audio.get("sample_rate")),
            "channels": _integer(audio.get("channels")),
        }
    return facts


async def poster(
    source: str, duration: float | None, specs: Sequence[VariantSpec], bounds: Bounds
) -> list[RenderedVariant]:
    """A frame at 10% of the duration or at 1 s, whichever is earlier, upright (ffmpeg
    applies the rotation), rendered into the variants."""
    at = min(1.0, 0.1 * duration) if duration else 0.0
    box = f"scale=w='min(iw,{POSTER_BOX})':h='min(ih,{POSTER_BOX})':force_original_aspect_ratio=decrease"
    command = [
        "ffmpeg", "-v", "error", "-nostdin", "-threads", "2",
        "-ss", f"{at:.3f}", "-i", source,
        "-frames:v", "1", "-vf", box, "-f", "image2pipe", "-c:v", "png", "-",
    ]  # fmt: skip
    frame = await _run(command, bounds, MAX_POSTER_BYTES)
    if not frame:
        raise MediaRejected("media.unreadable", f"no frame at {at:.3f} s")
    return await asyncio.to_thread(_variants_of_png, frame, specs)


def _variants_of_png(frame: bytes, specs: Sequence[VariantSpec]) -> list[RenderedVariant]:
    from PIL import Image

    with Image.open(io.BytesIO(frame), formats=["PNG"]) as picture:
        return variants_of(picture.convert("RGB"), specs)


def _is_cover(stream: dict[str, Any]) -> bool:
    """Cover art in an audio file is a video stream of one picture, not a video."""
    return bool((stream.get("disposition") or {}).get("attached_pic"))


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return round(number, 3) if math.isfinite(number) and number >= 0 else None


def _integer(value: object) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None


def _rate(value: object) -> float | None:
    if not isinstance(value, str) or "/" not in value:
        return None
    numerator, _, denominator = value.partition("/")
    try:
        rate = float(numerator) / float(denominator)
    except (ValueError, ZeroDivisionError):
        return None
    return round(rate, 3) if math.isfinite(rate) and rate > 0 else None


def _rotation(stream: dict[str, Any]) -> int:
    """Degrees, 0..359, as ffprobe reports the display matrix (or the older ``rotate`` tag)."""
    for side in stream.get("side_data_list") or []:
        if "rotation" in side:
            return _degrees(side["rotation"])
    return _degrees((stream.get("tags") or {}).get("rotate"))


def _degrees(value: object) -> int:
    try:
        degrees = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0
    return round(degrees) % 360 if math.isfinite(degrees) else 0
