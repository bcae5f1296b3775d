"""Test pictures whose orientation can be checked from their pixels."""

from __future__ import annotations

import io
import zipfile

from PIL import Image

RED = (220, 20, 20)
BLUE = (20, 20, 220)
# Stored pixels for each EXIF orientation: the inverse of what a viewer applies.
STORE_AS = {
    1: None,
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}


def upright_picture(width: int, height: int) -> Image.Image:
    """Blue, with a red top-left quarter: which way is up shows in the pixels."""
    picture = Image.new("RGB", (width, height), BLUE)
    picture.paste(RED, (0, 0, width // 2, height // 2))
    return picture


def jpeg(width: int = 1600, height: int = 1000, orientation: int = 1, quality: int = 90) -> bytes:
    """A JPEG that shows ``upright_picture(width, height)`` once its EXIF orientation is applied,
    with camera EXIF tags a variant must not keep."""
    stored = upright_picture(width, height)
    if STORE_AS[orientation] is not None:
        stored = stored.transpose(STORE_AS[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "Acme"
    exif[0x0110] = "Model 7"
    out = io.BytesIO()
    stored.save(out, "JPEG", quality=quality, exif=exif.tobytes())
    return out.getvalue()


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    upright_picture(width, height).save(out, "PNG")
    return out.getvalue()


def decompression_bomb(side: int = 20_000) -> bytes:
    """A tiny PNG that would decode to side x side pixels (400 million by default)."""
    out = io.BytesIO()
    Image.new("1", (side, side)).save(out, "PNG", optimize=True)
    return out.getvalue()


def zip_archive() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("notes.txt", "not a picture " * 100)
    return out.getvalue()


def is_upright(data: bytes) -> bool:
    """The decoded picture is landscape with red at its top left and blue at its bottom right."""
    picture = Image.open(io.BytesIO(data)).convert("RGB")
    width, height = picture.size
    top_left = picture.getpixel((width // 5, height // 5))
    bottom_right = picture.getpixel((width * 4 // 5, height * 4 // 5))
    return width > height and _near(top_left, RED) and _near(bottom_right, BLUE)


def _near(pixel: object, colour: tuple[int, int, int]) -> bool:
    assert isinstance(pixel, tuple)
    return all(abs(int(a) - b) < 40 for a, b in zip(pixel, colour, strict=False))
