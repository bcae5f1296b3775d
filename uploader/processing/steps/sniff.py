"""Sniffing: the media type an upload's first bytes show, from their signatures (never
from what the client declared). Every later step is chosen by the type found here.

Pure functions over bytes, used where an upload arrives too (its first bytes are
sniffed as they pass, so a file no other step applies to is ready at once)."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from uploader.auth.principal import type_allowed
from uploader.db.models import Upload
from uploader.kit.logging import get_logger
from uploader.processing.steps.base import StepContext, StepFailed, StepResult

log = get_logger(__name__)

SNIFF_BYTES = 4096


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


def detect(upload: Upload, head: bytes) -> str:
    """The type ``head`` shows; a declared type the bytes contradict is logged."""
    detected = sniff(head)
    if not types_agree(upload.declared_type, detected):
        log.info(
            "processing.type_mismatch", upload_id=upload.id, declared=upload.declared_type, detected=detected
        )
    return detected


def allowed(upload: Upload, detected: str) -> bool:
    """Whether the upload's token lets it be of the type its bytes show."""
    return upload.allowed_types is None or type_allowed(detected, tuple(upload.allowed_types))


class SniffStep:
    name: str = "sniff"
    types: Collection[str] | None = None
    records: tuple[str, ...] = ("detected_type",)
    announces: tuple[str, ...] = ()
    from_arrival: bool = True

    async def run(self, upload: Upload, context: StepContext) -> StepResult:
        head = await context.read(upload, 0, min(SNIFF_BYTES, upload.length or 0))
        detected = detect(upload, head)
        if not allowed(upload, detected):
            # The declared type passed at creation; what the bytes are did not.
            allowed_types = ", ".join(upload.allowed_types or [])
            raise StepFailed(
                f"upload.type_not_allowed: the file is {detected}, "
                f"not among the token's types ({allowed_types})",
                remove_bytes=True,
            )
        return StepResult({"detected_type": detected})
