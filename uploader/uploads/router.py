"""Status API: ``GET /api/v1/uploads``, ``GET`` and ``DELETE /api/v1/uploads/{id}``."""

from __future__ import annotations

import base64
import binascii

from fastapi import APIRouter, Query, Request, Response

from uploader.auth.dependencies import Deleting, Reading, Uploading
from uploader.auth.principal import ADMIN
from uploader.kit.errors import ProblemError
from uploader.uploads.dependencies import checked_upload_id, service_of
from uploader.uploads.schemas import UploadPage, UploadStatus

router = APIRouter(prefix="/api/v1/uploads", tags=["uploads"])


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"s{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("s") or not raw[1:].isdigit() or len(raw) > 20:
            raise ValueError(raw)
        return int(raw[1:])
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise ProblemError("pagination.cursor_invalid") from None


@router.get("", response_model=UploadPage)
async def list_uploads(
    request: Request,
    principal: Reading,
    limit: int = Query(50, ge=1, le=500),
    cursor: str | None = Query(None, max_length=64),
    owner: str | None = Query(None, max_length=200, description="Whose uploads (admin scope); all: '*'."),
) -> UploadPage:
    """The caller's uploads, newest first, a page at a time. With the admin scope: all
    uploads, or one principal's with ``owner``."""
    if owner is not None:
        principal.require(ADMIN)
    whose = principal.owner_filter if owner in (None, "*") else owner
    before = decode_cursor(cursor) if cursor else None
    uploads = await service_of(request).list_page(whose, before, limit + 1)
    tus_path = request.app.state.settings.tus_path
    items = [UploadStatus.of(u, tus_path) for u in uploads[:limit]]
    last_seq = uploads[limit - 1].seq if len(uploads) > limit else None
    next_cursor = encode_cursor(last_seq) if last_seq is not None else None
    return UploadPage(items=items, next_cursor=next_cursor)


@router.get("/{upload_id}", response_model=UploadStatus)
async def upload_status(request: Request, upload_id: str, principal: Reading) -> UploadStatus:
    """One upload's state, progress, metadata and links."""
    service = service_of(request)
    upload = await service.get(principal.owner_filter, checked_upload_id(upload_id), allow_gone=True)
    if upload.state == "terminated":
        raise ProblemError("upload.not_found")
    upload = await request.app.state.direct.settle_on_read(upload)
    return UploadStatus.of(upload, request.app.state.settings.tus_path)


@router.post("/{upload_id}/reprocess", response_model=UploadStatus, status_code=202)
async def reprocess_upload(request: Request, upload_id: str, principal: Uploading) -> UploadStatus:
    """Run processing again (after a failure, or with changed variant settings)."""
    upload = await service_of(request).reprocess(principal.owner_filter, checked_upload_id(upload_id))
    return UploadStatus.of(upload, request.app.state.settings.tus_path)


@router.delete("/{upload_id}", status_code=204)
async def delete_upload(request: Request, upload_id: str, principal: Deleting) -> Response:
    """Delete an upload, finished or not, with its bytes and variants."""
    await service_of(request).terminate(principal.owner_filter, checked_upload_id(upload_id))
    return Response(status_code=204)
