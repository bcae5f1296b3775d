"""Video and audio made in the tests by Debian's ffmpeg: a short clip with sound, a
rotated one, a tone; and files that only look like media."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def ffmpeg_installed() -> bool:
    return shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


def _ffmpeg(*arguments: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *arguments], check=True, timeout=120)


def video_clip(folder: Path, seconds: int = 3, size: str = "320x240", rotate: int = 0) -> bytes:
    """An H.264 + AAC MP4 of a test pattern with a 440 Hz tone; ``rotate`` sets its display
    rotation (as a phone's portrait video has)."""
    plain = folder / f"clip-{seconds}-{size}.mp4"
    _ffmpeg(
        "-f", "lavfi", "-i", f"testsrc=duration={seconds}:size={size}:rate=25",
        "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest",
        str(plain),
    )  # fmt: skip
    if not rotate:
        return plain.read_bytes()
    rotated = folder / f"rotated-{rotate}.mp4"
    _ffmpeg("-i", str(plain), "-c", "copy", "-metadata:s:v:0", f"rotate={rotate}", str(rotated))
    return rotated.read_bytes()


def audio_tone(folder: Path, seconds: int = 2) -> bytes:
    """A FLAC of a 440 Hz tone, 48 kHz, mono."""
    path = folder / "tone.flac"
    _ffmpeg("-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}:sample_rate=48000", str(path))
    return path.read_bytes()


# An MP4's first box, and nothing after: what a sniffer takes for video.
EMPTY_MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"
# Text that starts like an MP4.
DISGUISED = EMPTY_MP4 + b"this is a shopping list, not a film\n" * 200
