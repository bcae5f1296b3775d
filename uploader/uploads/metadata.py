"""What the service reads from client metadata (stored as the client's base64 values)."""

from __future__ import annotations

import base64
import binascii
import re

FILENAME_KEYS = ("filename", "name")
TYPE_KEYS = ("filetype", "type", "contentType", "content-type")
_MEDIA_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$")


def encode_value(value: str) -> str:
    """A metadata value as it is stored (and as tus sends it): base64 of its UTF-8."""
    return base64.b64encode(value.encode()).decode()


def decode_value(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def decoded(meta: dict[str, str | None]) -> dict[str, str | None]:
    return {key: decode_value(value) for key, value in meta.items()}


def _first(meta: dict[str, str | None], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = decode_value(meta.get(key))
        if value:
            return value
    return None


def filename_of(meta: dict[str, str | None]) -> str | None:
    name = _first(meta, FILENAME_KEYS)
    if name is None:
        return None
    # Keep the last path segment only, without control characters.
    name = re.split(r"[\\/]", name)[-1]
    name = "".join(ch for ch in name if ch.isprintable())
    return name[:255] or None


def declared_type_of(meta: dict[str, str | None]) -> str | None:
    value = _first(meta, TYPE_KEYS)
    if value is None:
        return None
    value = value.split(";", 1)[0].strip().lower()
    return value if _MEDIA_TYPE.match(value) else None
