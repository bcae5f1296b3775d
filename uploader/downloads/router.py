"""``GET /api/v1/uploads/{id}/content``: the original bytes."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from uploader.auth.dependencies import Principal, current_principal
from uploader.downloads.responses import content_response
from uploader.uploads.dependencies import checked_upload_id, service_of

router = APIRouter(prefix="/api/v1/uploads", tags=["downloads"])


@router.head("/{upload_id}/content", include_in_schema=False)
@router.get("/{upload_id}/content")
async def download_content(
    request: Request, upload_id: str, principal: Principal = Depends(current_principal)
) -> Response:
    """Stream the uploaded file, with Range, ETag and If-None-Match support."""
    service = service_of(request)
    upload = await service.get(principal.name, checked_upload_id(upload_id))
    return await content_response(request, upload, service.store)
