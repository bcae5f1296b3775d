"""``GET /api/v1/webhooks/deliveries``: the outbox's deliveries, with their attempts and
last error (admin scope)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request

from uploader.auth.dependencies import requires
from uploader.auth.principal import ADMIN
from uploader.uploads.dependencies import service_of
from uploader.uploads.router import decode_cursor, encode_cursor
from uploader.webhooks import outbox

router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"])


@router.get("/deliveries", dependencies=[Depends(requires(ADMIN))])
async def deliveries(
    request: Request,
    status: Literal["pending", "delivered", "dead"] | None = Query(None, description="Only these."),
    upload_id: str | None = Query(None, max_length=32, description="Only this upload's."),
    limit: int = Query(50, ge=1, le=500),
    cursor: str | None = Query(None, max_length=64),
) -> dict[str, Any]:
    """Newest first; ``next_cursor`` pages on. Each delivery: its id (the
    ``X-Uploader-Delivery`` header), type, upload, status, attempts so far, the last
    error, and when it is tried next (pending) or was delivered."""
    before = decode_cursor(cursor) if cursor else None
    db = service_of(request).db
    page = await db.run(
        lambda c: outbox.page(c, status=status, upload_id=upload_id, before=before, limit=limit + 1)
    )
    more = len(page) > limit
    return {
        "items": [delivery.as_json() for delivery in page[:limit]],
        "next_cursor": encode_cursor(page[limit - 1].seq) if more else None,
    }
