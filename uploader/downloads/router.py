"""``GET /api/v1/uploads/{id}/content`` (the original) and ``.../variants/{name}``."""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Request
from starlette.responses import Response

from uploader.auth.dependencies import Reading
from uploader.downloads.responses import (
    content_disposition,
    content_response,
    ensure_bytes_kept,
    ranged_response,
)
from uploader.kit.errors import ProblemError
from uploader.uploads.dependencies import checked_upload_id, service_of

router = APIRouter(prefix="/api/v1/uploads", tags=["downloads"])


@router.head("/{upload_id}/content", include_in_schema=False)
@router.get("/{upload_id}/content")
async def download_content(request: Request, upload_id: str, principal: Reading) -> Response:
    """Stream the uploaded file, with Range, ETag and If-None-Match support."""
    service = service_of(request)
    upload = await service.get(principal.owner_filter, checked_upload_id(upload_id))
    return await content_response(request, upload, service.store)


@router.head("/{upload_id}/variants/{name}", include_in_schema=False)
@router.get("/{upload_id}/variants/{name}")
async def download_variant(request: Request, upload_id: str, name: str, principal: Reading) -> Response:
    """Stream an image variant made by processing, with the same Range and ETag support."""
    service = service_of(request)
    upload = await service.get(principal.owner_filter, checked_upload_id(upload_id))
    ensure_bytes_kept(upload)
    variant = next((v for v in upload.variants or [] if v["name"] == name), None)
    if variant is None:
        raise ProblemError("variant.not_found", f"upload {upload.id} has no variant {name!r}")
    stem = (upload.filename or upload.id).rsplit(".", 1)[0]
    extension = {"jpeg": "jpg"}.get(variant["format"], variant["format"])
    return await ranged_response(
        request,
        size=int(variant["size"]),
        etag=f'"{upload.id}-{variant["sha256"][:32]}"',
        disposition=content_disposition(f"{stem}-{name.rsplit('.', 1)[0]}.{extension}", upload.id),
        media_type=variant["media_type"],
        read=partial(service.store.derived_reader, upload.storage_key, name),
    )
