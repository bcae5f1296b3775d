"""Parsing of tus 1.0 request headers; every malformed value becomes a 400 with a code."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from urllib.parse import urlsplit

from uploader.kit.errors import ProblemError
from uploader.uploads.dependencies import is_upload_id
from uploader.uploads.service import Checksum

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = (
    "creation,creation-with-upload,creation-defer-length,termination,expiration,"
    "checksum,concatenation,concatenation-unfinished"
)
CHECKSUM_ALGORITHMS = {"sha1": "sha1", "md5": "md5", "sha256": "sha256", "sha512": "sha512"}
_DIGITS = re.compile(r"^[0-9]{1,19}$")
_MAX_INT = 2**63 - 1
_METADATA_KEY = re.compile(r"^[!-+\--~]+$")  # visible ASCII, no comma
_MAX_METADATA = 16 * 1024


def parse_uint(value: str | None, header: str) -> int | None:
    if value is None:
        return None
    value = value.strip()
    if not _DIGITS.match(value) or int(value) > _MAX_INT:
        raise ProblemError("tus.header_invalid", f"{header} must be a non-negative integer")
    return int(value)


def parse_metadata(value: str | None) -> dict[str, str | None]:
    """``key base64,key2 base64,key3``: keys unique, values valid base64 (kept encoded)."""
    if value is None or not value.strip():
        return {}
    if len(value) > _MAX_METADATA:
        raise ProblemError("tus.metadata_invalid", f"Upload-Metadata is over {_MAX_METADATA} bytes")
    result: dict[str, str | None] = {}
    for pair in value.split(","):
        parts = pair.strip().split(" ")
        if len(parts) > 2 or not parts[0] or not _METADATA_KEY.match(parts[0]):
            raise ProblemError("tus.metadata_invalid", f"bad metadata pair {pair.strip()[:64]!r}")
        key = parts[0]
        if key in result:
            raise ProblemError("tus.metadata_invalid", f"metadata key {key[:64]!r} repeats")
        encoded = parts[1] if len(parts) == 2 else None
        if encoded is not None:
            try:
                base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise ProblemError("tus.metadata_invalid", f"value of {key[:64]!r} is not base64") from None
        result[key] = encoded
    return result


def encode_metadata(meta: dict[str, str | None]) -> str:
    """``Upload-Metadata`` of ``meta``. Keys a tus header cannot carry (a form's field
    names may be any text) are left out: the status document has them all."""
    return ",".join(
        key if value is None else f"{key} {value}" for key, value in meta.items() if _METADATA_KEY.match(key)
    )


def parse_checksum(value: str | None) -> Checksum | None:
    if value is None:
        return None
    algorithm, _, encoded = value.strip().partition(" ")
    name = CHECKSUM_ALGORITHMS.get(algorithm.lower())
    if name is None:
        raise ProblemError("tus.checksum_algorithm", f"supported: {','.join(CHECKSUM_ALGORITHMS)}")
    hasher = hashlib.new(name)
    try:
        expected = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ProblemError("tus.header_invalid", "Upload-Checksum value is not base64") from None
    if len(expected) != hasher.digest_size:
        raise ProblemError("tus.header_invalid", f"a {algorithm} digest has {hasher.digest_size} bytes")
    return Checksum(algorithm=name, expected=expected, hasher=hasher)


def upload_id_from_url(url: str, tus_path: str) -> str:
    """An upload id from a URL or path under the tus endpoint (as in Upload-Concat)."""
    path = urlsplit(url.strip()).path
    prefix = tus_path.rstrip("/") + "/"
    candidate = path[len(prefix) :] if path.startswith(prefix) else ""
    if not is_upload_id(candidate):
        raise ProblemError("tus.concat_invalid", f"{url[:200]!r} is not an upload URL of this server")
    return candidate


def parse_concat(value: str | None, tus_path: str) -> tuple[str, list[str]] | None:
    """``partial`` or ``final;URL URL...``; returns the role and the part ids."""
    if value is None:
        return None
    value = value.strip()
    if value == "partial":
        return "partial", []
    if value.startswith("final;"):
        urls = value[len("final;") :].split()
        if not urls:
            raise ProblemError("tus.concat_invalid", "a final upload needs at least one part")
        if len(urls) > 1000:
            raise ProblemError("tus.concat_invalid", "at most 1000 parts")
        return "final", [upload_id_from_url(u, tus_path) for u in urls]
    raise ProblemError("tus.concat_invalid", "Upload-Concat must be 'partial' or 'final;URLs'")


_DIGEST_MEMBER = re.compile(r"^\s*([a-z0-9*_.-]+)\s*=\s*:([A-Za-z0-9+/=]*):\s*(?:;.*)?$")


def parse_repr_digest(value: str | None) -> str | None:
    """The SHA-256 in a ``Repr-Digest`` field (RFC 9530: ``sha-256=:<base64>:``, maybe
    beside other algorithms), as hex; None when the field is absent or names no SHA-256."""
    if value is None:
        return None
    for member in value.split(","):
        match = _DIGEST_MEMBER.match(member)
        if match is None:
            raise ProblemError("upload.digest_invalid", "Repr-Digest is not a dictionary of byte sequences")
        if match.group(1) != "sha-256":
            continue
        try:
            digest = base64.b64decode(match.group(2), validate=True)
        except (binascii.Error, ValueError):
            raise ProblemError("upload.digest_invalid", "the sha-256 of Repr-Digest is not base64") from None
        if len(digest) != 32:
            raise ProblemError("upload.digest_invalid", "a sha-256 digest has 32 bytes")
        return digest.hex()
    return None
