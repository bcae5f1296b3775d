"""Resumable Uploads for HTTP (the IETF draft) on the tus URLs, for requests that carry
``Upload-Draft-Interop-Version``: 6 (draft 05, what tus-js-client's ``ietf-draft-05``
protocol speaks) and 8 (drafts 09 to 12).

Both map onto the same uploads as tus: an upload created here can be resumed, followed
and downloaded like any other. What the draft adds is explicit completion
(``Upload-Complete``), lengths that may be learnt at the end, and its problem types.
The ``104 (Upload Resumption Supported)`` interim response is not sent: ASGI servers
have no way to send informational responses. A client that needs to resume a
single-request upload therefore creates it with ``Upload-Complete: ?0`` first (it
gets the ``Location`` at once), then sends everything in one append.
"""

from __future__ import annotations

import re
import urllib.parse

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from uploader.auth.principal import Principal
from uploader.db.models import Upload
from uploader.kit.errors import ProblemError
from uploader.observability.metrics import counted_as
from uploader.protocols.tus_headers import parse_metadata, parse_repr_digest
from uploader.uploads.body import RequestBody, empty_body, has_body
from uploader.uploads.dependencies import checked_upload_id, service_of
from uploader.uploads.metadata import FILENAME_KEYS, TYPE_KEYS, encode_value
from uploader.uploads.schemas import UploadStatus

SUPPORTED_VERSIONS = ("6", "8")
PARTIAL_UPLOAD = "application/partial-upload"
_SF_INTEGER = re.compile(r"^[0-9]{1,15}$")
_FILENAME_STAR = re.compile(r"filename\*\s*=\s*UTF-8''([^;\s]+)", re.IGNORECASE)
_FILENAME = re.compile(r'filename\s*=\s*"([^"]*)"', re.IGNORECASE)


def interop_version(request: Request) -> str | None:
    """The draft version a request speaks; ``None`` for tus requests."""
    value = request.headers.get("upload-draft-interop-version")
    if value is None:
        return None
    value = value.strip()
    if value not in SUPPORTED_VERSIONS:
        raise ProblemError(
            "ietf.version_unsupported",
            f"Upload-Draft-Interop-Version {value!r} is not one of {', '.join(SUPPORTED_VERSIONS)}",
        )
    return value


def _integer(request: Request, name: str) -> int | None:
    value = request.headers.get(name)
    if value is None:
        return None
    if not _SF_INTEGER.match(value.strip()):
        raise ProblemError("ietf.header_invalid", f"{name} must be a non-negative integer")
    return int(value.strip())


def _complete(request: Request, required: bool) -> bool | None:
    value = request.headers.get("upload-complete")
    if value is None:
        if required:
            raise ProblemError("ietf.header_invalid", "Upload-Complete (?0 or ?1) is required")
        return None
    value = value.strip()
    if value not in ("?0", "?1"):
        raise ProblemError("ietf.header_invalid", "Upload-Complete must be ?0 or ?1")
    return value == "?1"


def _limits(request: Request, version: str) -> str:
    settings = request.app.state.settings
    age = "expires" if version == "6" else "max-age"  # renamed after draft 05
    return f"max-size={settings.max_upload_size}, {age}={settings.upload_ttl_seconds}"


def _headers(request: Request, version: str, upload: Upload) -> dict[str, str]:
    headers = {
        "Upload-Draft-Interop-Version": version,
        "Upload-Offset": str(upload.offset),
        "Upload-Complete": "?1" if upload.is_complete else "?0",
        "Upload-Limit": _limits(request, version),
        "Cache-Control": "no-store",
    }
    if upload.length is not None:
        headers["Upload-Length"] = str(upload.length)
    return headers


def _metadata(request: Request) -> dict[str, str | None]:
    """tus-style ``Upload-Metadata`` (tus-js-client sends it), else the draft's way:
    ``Content-Type`` and a ``Content-Disposition`` file name."""
    meta = parse_metadata(request.headers.get("upload-metadata"))
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip()
    if media_type and media_type != PARTIAL_UPLOAD and not any(k in meta for k in TYPE_KEYS):
        meta["filetype"] = encode_value(media_type)
    disposition = request.headers.get("content-disposition", "")
    name = None
    if match := _FILENAME_STAR.search(disposition):
        name = urllib.parse.unquote(match.group(1))
    elif match := _FILENAME.search(disposition):
        name = match.group(1)
    if name and not any(k in meta for k in FILENAME_KEYS):
        meta["filename"] = encode_value(name)
    return meta


async def create(request: Request, principal: Principal, version: str, location: str) -> Response:
    with counted_as("ietf"):
        return await _create(request, principal, version, location)


async def _create(request: Request, principal: Principal, version: str, location: str) -> Response:
    service = service_of(request)
    complete = _complete(request, required=True)
    content_length = _integer(request, "content-length")
    length = _integer(request, "upload-length")
    if complete and content_length is not None:
        if length is not None and length != content_length:
            raise ProblemError("ietf.inconsistent_length", "Upload-Length and Content-Length disagree")
        length = content_length
    try:
        digest = parse_repr_digest(request.headers.get("repr-digest")) if length is not None else None
        upload = await service.create(principal, length, _metadata(request), declared_sha256=digest)
    except ProblemError as exc:
        if exc.code == "upload.too_large":  # the draft wants the limits with a 413
            exc.headers["Upload-Limit"] = _limits(request, version)
        raise
    url = location + upload.id
    if has_body(request.headers, content_length) and not upload.is_complete:  # complete: deduplicated
        body = RequestBody(request.stream(), limit=0)
        upload = await service.append(principal.name, upload.id, 0, body, content_length=content_length)
        if body.disconnected or body.interrupted:
            return _answer(request, version, upload, url, 201)
    if complete and not upload.is_complete:
        upload = await service.complete_at_offset(principal.name, upload.id)
    return _answer(request, version, upload, url, 201)


async def head(request: Request, principal: Principal, version: str, upload_id: str) -> Response:
    upload = await service_of(request).get_settled(principal.name, checked_upload_id(upload_id))
    return Response(status_code=204, headers=_headers(request, version, upload))


async def append(request: Request, principal: Principal, version: str, upload_id: str) -> Response:
    with counted_as("ietf"):
        return await _append(request, principal, version, upload_id)


async def _append(request: Request, principal: Principal, version: str, upload_id: str) -> Response:
    service = service_of(request)
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != PARTIAL_UPLOAD:
        raise ProblemError("ietf.content_type", f"send Content-Type: {PARTIAL_UPLOAD}")
    offset = _integer(request, "upload-offset")
    if offset is None:
        raise ProblemError("ietf.header_invalid", "Upload-Offset is required")
    complete = _complete(request, required=True)
    content_length = _integer(request, "content-length")
    length = _integer(request, "upload-length")
    upload = await service.get(principal.name, checked_upload_id(upload_id))
    with_body = has_body(request.headers, content_length)
    if upload.is_complete:
        if complete and not with_body and offset == upload.offset:
            return _answer(request, version, upload, None, 200)  # the same completion, again
        raise ProblemError("ietf.completed_upload", headers=_headers(request, version, upload))
    # (A request at the wrong offset is told so by the service, not as a length problem.)
    if complete and content_length is not None and offset == upload.offset:
        total = offset + content_length
        if (length is not None and length != total) or (upload.length is not None and upload.length != total):
            raise ProblemError("ietf.inconsistent_length", f"these bytes would end the upload at {total}")
        length = total
    if length is not None and upload.length is not None and length != upload.length:
        raise ProblemError("ietf.inconsistent_length", f"the upload is {upload.length} bytes long")
    body = RequestBody(request.stream() if with_body else empty_body(), limit=0)
    try:
        upload = await service.append(
            principal.name,
            upload.id,
            offset,
            body,
            content_length=content_length,
            declared_length=length if upload.length is None else None,
        )
    except ProblemError as exc:
        if exc.code == "upload.offset_mismatch":  # the service compares offsets under the lock
            current = await service.get(principal.name, upload.id)
            raise ProblemError(
                "ietf.mismatching_offset",
                exc.detail,
                headers=_headers(request, version, current),
                members={"expected-offset": current.offset, "provided-offset": offset},
            ) from None
        if exc.code == "upload.exceeds_length":
            raise ProblemError("ietf.inconsistent_length", exc.detail) from None
        raise
    if body.disconnected or body.interrupted:
        return _answer(request, version, upload, None, 204)
    if complete and not upload.is_complete:
        upload = await service.complete_at_offset(principal.name, upload.id)
    return _answer(request, version, upload, None, 200 if upload.is_complete else 204)


def _answer(request: Request, version: str, upload: Upload, location: str | None, status: int) -> Response:
    """A complete upload answers with its status document (what the upload is now);
    an incomplete one with its offset."""
    headers = _headers(request, version, upload)
    if location is not None:
        headers["Location"] = location
    if not upload.is_complete:
        return Response(status_code=status, headers=headers)
    body = UploadStatus.of(upload, request.app.state.settings.tus_path).model_dump(mode="json")
    return JSONResponse(body, status_code=status, headers=headers)


def options_headers(request: Request) -> dict[str, str]:
    return {
        "Accept-Patch": PARTIAL_UPLOAD,
        "Upload-Limit": _limits(request, interop_version(request) or "8"),
    }
