"""Streaming downloads with a single Range, ETag and conditional requests."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from uploader.db.models import Upload
from uploader.kit.errors import ProblemError
from uploader.storage.base import PresignableUpload, UploadStore

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def etag_of(upload: Upload) -> str:
    # The bytes of a complete upload never change, so id and length identify them.
    return f'"{upload.id}-{upload.length}"'


def content_disposition(filename: str | None, fallback: str) -> str:
    name = filename or fallback
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


def _etag_matches(header: str, etag: str) -> bool:
    candidates = [c.strip().removeprefix("W/") for c in header.split(",")]
    return "*" in candidates or etag in candidates


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """One satisfiable ``[start, end)`` range, ``None`` to serve everything.

    Malformed or multi-range headers are ignored (a full 200), as RFC 9110 allows.
    """
    if header is None:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        count = int(last)
        if count == 0:
            raise ProblemError("range.not_satisfiable", headers={"Content-Range": f"bytes */{size}"})
        return max(0, size - count), size
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if last and int(last) < start:
        return None
    if start >= size:
        raise ProblemError("range.not_satisfiable", headers={"Content-Range": f"bytes */{size}"})
    return start, end


def ensure_bytes_kept(upload: Upload) -> None:
    """An upload whose bytes were removed (a type its token did not allow) has nothing to
    download, nor variants: ``410 upload.rejected``."""
    if upload.bytes_removed:
        raise ProblemError("upload.rejected", f"its bytes were removed: {upload.failure_reason}")


async def content_response(
    request: Request, upload: Upload, store: UploadStore, media_type: str | None = None
) -> Response:
    """The original bytes of a complete upload."""
    ensure_bytes_kept(upload)
    if not upload.is_complete or upload.length is None:
        raise ProblemError("upload.incomplete", f"{upload.offset} of {upload.length} bytes received")
    stored = await store.find(upload.storage_key)
    settings = request.app.state.settings
    presign = stored if settings.s3_presigned_downloads and isinstance(stored, PresignableUpload) else None
    return await ranged_response(
        request,
        size=upload.length,
        etag=etag_of(upload),
        disposition=content_disposition(upload.filename, upload.id),
        media_type=media_type or upload.declared_type or "application/octet-stream",
        read=stored.reader,
        presign=presign,
    )


async def ranged_response(
    request: Request,
    *,
    size: int,
    etag: str,
    disposition: str,
    media_type: str,
    read: Callable[[int, int], AsyncIterator[bytes]],
    presign: PresignableUpload | None = None,
) -> Response:
    """Streams ``read(start, end)`` with one Range, ``ETag``, ``If-None-Match`` and ``If-Range``."""
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Content-Disposition": disposition,
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, max-age=0, must-revalidate",
    }
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and _etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    byte_range = parse_range(request.headers.get("range"), size)
    if_range = request.headers.get("if-range")
    if byte_range is not None and if_range is not None and if_range.strip() != etag:
        byte_range = None
    start, end = byte_range or (0, size)
    status = 206 if byte_range is not None else 200
    if status == 206:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    headers["Content-Length"] = str(end - start)
    if presign is not None:
        # The bytes come straight from object storage, which handles Range itself.
        settings = request.app.state.settings
        url = await presign.presigned_url(settings.s3_presign_seconds, disposition, media_type)
        return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=media_type)
    # The first block is read before anything is sent: a download whose bytes are missing
    # is a 503, never a 200 that promises a length and then ends.
    blocks = read(start, end)
    first = await anext(blocks, b"") if end > start else b""
    return StreamingResponse(
        _chained(first, blocks), status_code=status, headers=headers, media_type=media_type
    )


async def _chained(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for block in rest:
        yield block
