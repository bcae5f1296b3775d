"""Processing steps: plain functions over an upload's bytes, with no I/O of their own.

The pipeline feeds them bytes and stores what they return, on a Celery worker or in the
API process alike. Each is deterministic, so running a step twice gives the same result.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageFile, UnidentifiedImageError

from uploader.settings import VariantSpec

SNIFF_BYTES = 4096
# Formats we decode, by the type sniffing found (never by what the client declared).
IMAGE_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP", "image/gif": "GIF"}
MEDIA_TYPES = {"webp": "image/webp", "jpeg": "image/jpeg", "png": "image/png"}
# EXIF tags worth showing: camera, time, orientation, dimensions as recorded.
EXIF_SUBSET = {
    0x010F: "make",
    0x0110: "model",
    0x0112: "orientation",
    0x0131: "software",
    0x0132: "datetime",
}
EXIF_IFD_SUBSET = {0x9003: "datetime_original", 0x829A: "exposure_time", 0x829D: "f_number", 0x8827: "iso"}
# Orientation tag value -> the transpose that makes the pixels upright.
ORIENTATION_FIX = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a cut-off file is an error, not a grey half-picture


async def sha256_of(blocks: AsyncIterator[bytes], progress: Callable[[int], Any] | None = None) -> str:
    """Hex SHA-256 of a byte stream; hashing runs off the event loop (hashlib drops the GIL)."""
    digest = hashlib.sha256()
    done = 0
    async for block in blocks:
        await asyncio.to_thread(digest.update, block)
        done += len(block)
        if progress is not None:
            await progress(done)
    return digest.hexdigest()


# -- content sniffing ----------------------------------------------------------------


def sniff(head: bytes) -> str:
    """The media type the first bytes of a file show, from their signatures."""
    for offset, signature, media_type in _SIGNATURES:
        if head[offset : offset + len(signature)] == signature:
            return media_type
    if head[:4] == b"RIFF" and len(head) >= 12:
        return {b"WEBP": "image/webp", b"WAVE": "audio/wav", b"AVI ": "video/x-msvideo"}.get(
            head[8:12], "application/octet-stream"
        )
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"mif1", b"msf1"):
            return "image/heic"
        if brand in (b"avif", b"avis"):
            return "image/avif"
        if brand == b"qt  ":
            return "video/quicktime"
        return "video/mp4"
    return _sniff_text(head)


_SIGNATURES: Sequence[tuple[int, bytes, str]] = (
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (0, b"BM", "image/bmp"),
    (0, b"II*\x00", "image/tiff"),
    (0, b"MM\x00*", "image/tiff"),
    (0, b"\x00\x00\x01\x00", "image/x-icon"),
    (0, b"%PDF-", "application/pdf"),
    (0, b"PK\x03\x04", "application/zip"),
    (0, b"PK\x05\x06", "application/zip"),
    (0, b"\x1f\x8b", "application/gzip"),
    (0, b"BZh", "application/x-bzip2"),
    (0, b"\xfd7zXZ\x00", "application/x-xz"),
    (0, b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed"),
    (0, b"Rar!\x1a\x07", "application/vnd.rar"),
    (0, b"\x28\xb5\x2f\xfd", "application/zstd"),
    (257, b"ustar", "application/x-tar"),
    (0, b"\x1a\x45\xdf\xa3", "video/webm"),
    (0, b"OggS", "audio/ogg"),
    (0, b"fLaC", "audio/flac"),
    (0, b"ID3", "audio/mpeg"),
    (0, b"\xff\xfb", "audio/mpeg"),
    (0, b"\x7fELF", "application/x-executable"),
    (0, b"MZ", "application/vnd.microsoft.portable-executable"),
    (0, b"SQLite format 3\x00", "application/vnd.sqlite3"),
    (0, b"\xef\xbb\xbf", "text/plain"),
)


def _sniff_text(head: bytes) -> str:
    if not head:
        return "application/x-empty"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut by the end of the sample is still text.
        if exc.start < len(head) - 3:
            return "application/octet-stream"
        text = head[: exc.start].decode("utf-8")
    if any(ord(c) < 32 and c not in "\t\n\r\f" for c in text):
        return "application/octet-stream"
    stripped = text.lstrip().lower()
    if stripped.startswith(("<!doctype html", "<html")):
        return "text/html"
    if stripped.startswith("<svg") or (stripped.startswith("<?xml") and "<svg" in stripped):
        return "image/svg+xml"
    if stripped.startswith("<?xml"):
        return "application/xml"
    if stripped[:1] in ("{", "["):
        return "application/json"
    return "text/plain"


def types_agree(declared: str | None, detected: str) -> bool:
    """Whether a client's declared type fits what the bytes show (parameters ignored)."""
    if not declared:
        return True
    base = declared.split(";", 1)[0].strip().lower()
    if base == detected or base in ("application/octet-stream", ""):
        return True
    # Text formats are not told apart by their bytes; any text/* fits plain text.
    return detected == "text/plain" and (base.startswith("text/") or base.endswith(("+json", "/json")))


# -- images ------------------------------------------------------------------------------


class ImageRejected(Exception):
    """The image cannot be rendered; ``code`` is stable, the message readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass(frozen=True)
class RenderedVariant:
    name: str
    format: str
    media_type: str
    width: int
    height: int
    data: bytes


@dataclass(frozen=True)
class ImageFacts:
    format: str
    width: int  # upright, after the EXIF orientation
    height: int
    exif: dict[str, str | int | float]

    def as_json(self) -> dict[str, Any]:
        return {"format": self.format, "width": self.width, "height": self.height, "exif": self.exif}


def _exif_subset(image: Image.Image) -> tuple[dict[str, str | int | float], int]:
    exif = image.getexif()
    facts: dict[str, str | int | float] = {}
    for tag, name in EXIF_SUBSET.items():
        if tag in exif:
            facts[name] = _plain(exif[tag])
    try:
        details = exif.get_ifd(0x8769)
    except Exception:  # a broken EXIF block is no reason to refuse the picture
        details = {}
    for tag, name in EXIF_IFD_SUBSET.items():
        if tag in details:
            facts[name] = _plain(details[tag])
    orientation = exif.get(0x0112, 1)
    return facts, orientation if isinstance(orientation, int) else 1


def _plain(value: Any) -> str | int | float:
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip("\x00 ")
    if isinstance(value, int | float | str):
        return value.strip("\x00 ") if isinstance(value, str) else value
    try:
        return float(value)  # IFDRational
    except (TypeError, ValueError):
        return str(value)


def render_variants(
    data: bytes, pillow_format: str, specs: Sequence[VariantSpec], max_pixels: int
) -> tuple[ImageFacts, list[RenderedVariant]]:
    """Decode once, at the smallest scale the largest variant allows, and derive every variant.

    Fast paths: JPEG draft mode (the decoder scales by 1/2..1/8 while decoding) and
    ``reduce`` (integer box downscale) before the final Lanczos resize.
    """
    try:
        with Image.open(io.BytesIO(data), formats=[pillow_format]) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRejected(
                    "image.too_many_pixels",
                    f"{width}x{height} is {width * height} pixels, over the limit of {max_pixels}",
                )
            exif, orientation = _exif_subset(image)
            transpose = ORIENTATION_FIX.get(orientation)
            upright = (height, width) if transpose in _SWAPS else (width, height)
            facts = ImageFacts(format=pillow_format, width=upright[0], height=upright[1], exif=exif)
            if not specs:
                return facts, []
            largest = max(spec.size for spec in specs)
            if pillow_format == "JPEG":
                # The smallest DCT scale still at least as large as the largest variant.
                scale = largest / max(width, height)
                image.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))
            image.load()
            frame = image.convert("RGBA" if _has_alpha(image) else "RGB")
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageRejected("image.too_many_pixels", str(exc)) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRejected("image.unreadable", str(exc) or type(exc).__name__) from exc

    # Box-reduce by an integer factor while staying at least twice the target: the final
    # Lanczos pass then has little work and keeps its quality.
    factor = max(frame.size) // (2 * largest)
    if factor > 1:
        frame = frame.reduce(factor)
    if transpose is not None:
        frame = frame.transpose(transpose)

    variants: list[RenderedVariant] = []
    scaled: dict[int, Image.Image] = {}
    source = frame
    for size in sorted({spec.size for spec in specs}, reverse=True):
        # Each size is made from the next larger one: far fewer pixels to filter.
        scaled[size] = source = _fit(source, size)
    for spec in specs:
        picture = scaled[spec.size]
        variants.append(
            RenderedVariant(
                name=spec.name,
                format=spec.format,
                media_type=MEDIA_TYPES[spec.format],
                width=picture.width,
                height=picture.height,
                data=_encode(picture, spec.format),
            )
        )
    return facts, variants


_SWAPS = {
    Image.Transpose.TRANSPOSE,
    Image.Transpose.TRANSVERSE,
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_270,
}


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


def _fit(image: Image.Image, size: int) -> Image.Image:
    if max(image.size) <= size:
        return image
    scale = size / max(image.size)
    target = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(target, Image.Resampling.LANCZOS)


def _encode(image: Image.Image, fmt: str) -> bytes:
    """Encode without any metadata (no EXIF, no ICC, no comments): only pixels leave."""
    out = io.BytesIO()
    if fmt == "jpeg":
        if image.mode == "RGBA":
            background = Image.new("RGB", image.size, (255, 255, 255))
            background.paste(image, mask=image.getchannel("A"))
            image = background
        image.save(out, "JPEG", quality=85, optimize=False)
    elif fmt == "webp":
        image.save(out, "WEBP", quality=80, method=4)
    else:
        image.save(out, "PNG", compress_level=6)
    return out.getvalue()
