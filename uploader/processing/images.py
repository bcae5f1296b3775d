"""Image variants with Pillow: decode once, at the smallest scale the largest variant needs.

Imported only when an image is processed, so processes that never render one (the API
with workers in the full stack) do not carry Pillow.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageFile, UnidentifiedImageError

from uploader.renders.ops import fit_scale
from uploader.settings import VariantSpec

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


class Unrenderable(Exception):
    """A file its decoder cannot read or render; ``code`` is stable, the message readable.
    Each decoder (Pillow here, pdfium, ffmpeg) raises a kind of its own."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class ImageRejected(Unrenderable):
    """The image cannot be rendered."""


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


@dataclass
class _Decoded:
    frame: Image.Image  # as stored: not yet turned upright
    transpose: Image.Transpose | None  # what turns it upright
    facts: ImageFacts


def _decoded(
    data: bytes, pillow_format: str, max_pixels: int, scale_for: Callable[[int, int], float]
) -> _Decoded:
    """Open and check an image, read its EXIF, and decode it, for a JPEG at the smallest DCT
    scale (1/2..1/8) still at least ``scale_for(upright width, upright height)`` of its size."""
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
            scale = scale_for(*upright)
            if pillow_format == "JPEG" and scale < 1:
                image.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))
            image.load()
            return _Decoded(image.convert("RGBA" if _has_alpha(image) else "RGB"), transpose, facts)
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageRejected("image.too_many_pixels", str(exc)) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRejected("image.unreadable", str(exc) or type(exc).__name__) from exc


def _facts_only(data: bytes, pillow_format: str, max_pixels: int) -> ImageFacts:
    return _decoded(data, pillow_format, max_pixels, lambda w, h: 1 / 8).facts


def render_variants(
    data: bytes, pillow_format: str, specs: Sequence[VariantSpec], max_pixels: int
) -> tuple[ImageFacts, list[RenderedVariant]]:
    """Decode once, at the smallest scale the largest variant allows, and derive every variant.

    Fast paths: JPEG draft mode (the decoder scales by 1/2..1/8 while decoding) and
    ``reduce`` (integer box downscale) before the final Lanczos resize.
    """
    if not specs:
        return _facts_only(data, pillow_format, max_pixels), []
    largest = max(spec.size for spec in specs)
    decoded = _decoded(data, pillow_format, max_pixels, lambda w, h: largest / max(w, h))
    frame, transpose, facts = decoded.frame, decoded.transpose, decoded.facts

    # Box-reduce by an integer factor while staying at least twice the target: the final
    # Lanczos pass then has little work and keeps its quality.
    factor = max(frame.size) // (2 * largest)
    if factor > 1:
        frame = frame.reduce(factor)
    if transpose is not None:
        frame = frame.transpose(transpose)
    return facts, variants_of(frame, specs)


def variants_of(frame: Image.Image, specs: Sequence[VariantSpec]) -> list[RenderedVariant]:
    """Every variant of an upright picture (a decoded image, a document's first page, a
    video's poster frame), each size made from the next larger one, without metadata."""
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
    return variants


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


def _encode(image: Image.Image, fmt: str, quality: int | None = None) -> bytes:
    """Encode without any metadata (no EXIF, no ICC, no comments): only pixels leave."""
    out = io.BytesIO()
    if fmt == "jpeg":
        if image.mode == "RGBA":
            background = Image.new("RGB", image.size, (255, 255, 255))
            background.paste(image, mask=image.getchannel("A"))
            image = background
        image.save(out, "JPEG", quality=quality or 85, optimize=False)
    elif fmt == "webp":
        image.save(out, "WEBP", quality=quality or 80, method=4)
    else:
        image.save(out, "PNG", compress_level=6)
    return out.getvalue()


def render_one(
    data: bytes,
    pillow_format: str,
    box: tuple[int | None, int | None],
    fit: str,
    fmt: str,
    quality: int,
    max_pixels: int,
) -> tuple[bytes, int, int]:
    """One render of an image into ``box`` (width, height; either may be None): decoded
    at the smallest JPEG draft scale the box allows, upright, fitted (``contain``: within,
    never enlarged; ``cover``: filled, centred crop; ``fill``: exactly), encoded without
    metadata. Returns the bytes and their width and height."""
    decoded = _decoded(data, pillow_format, max_pixels, lambda w, h: fit_scale(w, h, box, fit))
    frame = decoded.frame
    if decoded.transpose is not None:
        frame = frame.transpose(decoded.transpose)
    frame = _fitted(frame, box, fit)
    return _encode(frame, fmt, quality), frame.width, frame.height


def _fitted(frame: Image.Image, box: tuple[int | None, int | None], fit: str) -> Image.Image:
    width, height = frame.size
    scale = fit_scale(width, height, box, fit)
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    box_w, box_h = box[0] or target[0], box[1] or target[1]
    if fit == "fill":
        target = (box_w, box_h)
    elif fit == "cover":
        target = (max(box_w, target[0]), max(box_h, target[1]))
    # Box-reduce first while staying at least twice the target, as the variants do.
    factor = min(width // (2 * target[0]), height // (2 * target[1]))
    if factor > 1:
        frame = frame.reduce(factor)
    if frame.size != target:
        frame = frame.resize(target, Image.Resampling.LANCZOS)
    if fit == "cover":
        left, top = (frame.width - box_w) // 2, (frame.height - box_h) // 2
        frame = frame.crop((left, top, left + box_w, top + box_h))
    return frame
