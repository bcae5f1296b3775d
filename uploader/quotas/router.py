"""``GET /api/v1/usage``: what the caller holds, beside its quota."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from uploader.auth.dependencies import CurrentPrincipal
from uploader.quotas.admission import usage_of
from uploader.uploads.dependencies import service_of

router = APIRouter(prefix="/api/v1", tags=["usage"])


@router.get("/usage")
async def usage(request: Request, principal: CurrentPrincipal) -> dict[str, Any]:
    """Bytes held and unfinished uploads, each with its limit (null: unlimited), and the
    caller's own limits: its scopes and, for an upload token, what each file may be."""
    service = service_of(request)
    used = await service.db.run(lambda c: usage_of(c, principal.name))
    quota_bytes, quota_active = service.admission.quota_of(principal)
    limits = principal.limits
    return {
        "principal": principal.name,
        "scopes": sorted(principal.scopes),
        "bytes": {"used": used.bytes, "limit": quota_bytes},
        "active_uploads": {"used": used.active_uploads, "limit": quota_active},
        "token": None
        if limits is None
        else {"max_size": limits.max_size, "types": limits.types, "max_files": limits.max_files},
        "max_upload_size": service.admission.max_size_of(principal, service.settings.max_upload_size),
    }
