"""The Companion-compatible S3 routes: ``@uppy/aws-s3`` with ``companionEndpoint`` set to
this server uploads straight to the bucket, unmodified. Shapes follow the plugin's
Companion client (``CompanionS3``): errors carry ``{"error": "…"}`` beside the problem
document, and ``key`` travels URL-encoded in the query.

Also ``POST /s3/events``: S3 or MinIO event notifications, which tell of objects stored
by a single-request upload sooner than the schedule that looks for them.
"""

from __future__ import annotations

import hmac
import re
from typing import Any
from urllib.parse import unquote_plus

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from uploader.auth.dependencies import Uploading
from uploader.direct.service import DirectUploads
from uploader.kit.errors import ProblemError

router = APIRouter(prefix="/s3", tags=["direct uploads"])

_METADATA_FIELD = re.compile(r"^metadata\[(.{1,200})\]$")
_KEY = Query(min_length=1, max_length=1024, description="The object key, as the creation answered it")


def direct_of(request: Request) -> DirectUploads:
    direct: DirectUploads = request.app.state.direct
    return direct


def _expires(request: Request) -> int:
    seconds: int = request.app.state.settings.s3_direct_sign_seconds
    return seconds


class SignedPost(BaseModel):
    method: str = "POST"
    url: str = Field(description="The bucket's URL; the object's is this followed by the key")
    fields: dict[str, str] = Field(description="Form fields to send before the file (policy, signature, key)")
    expires: int = Field(description="Seconds the signature stays valid")
    upload_id: str = Field(description="The upload's id in the status API")


@router.get("/params", response_model=SignedPost)
async def sign_single_upload(
    request: Request,
    principal: Uploading,
    filename: str | None = Query(None, max_length=1024),
    type: str | None = Query(None, max_length=255),
) -> SignedPost:
    """A new upload sent to S3 in one POST: the form's URL and fields. Its size is
    bounded by the signed policy; ``metadata[name]=value`` pairs become its metadata."""
    metadata = {
        match.group(1): value
        for name, value in request.query_params.multi_items()
        if (match := _METADATA_FIELD.match(name))
    }
    upload, url, fields = await direct_of(request).start_single(principal, filename, type, metadata)
    return SignedPost(url=url, fields=fields, expires=_expires(request), upload_id=upload.id)


class MultipartRequest(BaseModel):
    filename: str | None = Field(None, max_length=1024)
    type: str | None = Field(None, max_length=255)
    metadata: dict[str, Any] = Field(default_factory=dict)


class MultipartStarted(BaseModel):
    key: str
    uploadId: str
    bucket: str
    upload_id: str = Field(description="The upload's id in the status API")


@router.post("/multipart", response_model=MultipartStarted)
async def start_multipart_upload(
    request: Request, principal: Uploading, body: MultipartRequest
) -> MultipartStarted:
    """A new upload sent to S3 in parts."""
    direct = direct_of(request)
    metadata = {str(k): "" if v is None else str(v) for k, v in body.metadata.items()}
    upload, multipart_id = await direct.start_multipart(principal, body.filename, body.type, metadata)
    assert direct.s3 is not None
    return MultipartStarted(
        key=direct.s3.object_key(upload.storage_key),
        uploadId=multipart_id,
        bucket=direct.s3.bucket,
        upload_id=upload.id,
    )


class Part(BaseModel):
    PartNumber: int = Field(ge=1, le=10_000)
    ETag: str = Field(min_length=1, max_length=200)
    Size: int | None = None


@router.get("/multipart/{upload_id}", response_model=list[Part])
async def list_parts(request: Request, upload_id: str, principal: Uploading, key: str = _KEY) -> list[Part]:
    """The parts S3 holds so far, every page merged (a client resuming asks)."""
    parts = await direct_of(request).list_parts(principal, key, upload_id)
    return [Part(**part) for part in parts]


class SignedPart(BaseModel):
    url: str
    expires: int


@router.get("/multipart/{upload_id}/{part_number}", response_model=SignedPart)
async def sign_part(
    request: Request, upload_id: str, part_number: int, principal: Uploading, key: str = _KEY
) -> Response:
    """A URL to PUT one part to."""
    url = await direct_of(request).sign_part(principal, key, upload_id, part_number)
    # Asked once per part: the document is rendered here, not validated against the model
    # it is documented by.
    return JSONResponse({"url": url, "expires": _expires(request)})


class CompleteRequest(BaseModel):
    parts: list[Part] = Field(min_length=1, max_length=10_000)


class Completed(BaseModel):
    location: str
    key: str
    bucket: str
    upload_id: str = Field(description="The upload's id in the status API")
    state: str = Field(description="received (processing follows), ready, or failed")


@router.post("/multipart/{upload_id}/complete", response_model=Completed)
async def complete_multipart_upload(
    request: Request, upload_id: str, principal: Uploading, body: CompleteRequest, key: str = _KEY
) -> Completed:
    """Join the parts into the object; the upload is then received (or failed, when S3
    holds more than it may have)."""
    direct = direct_of(request)
    parts = [
        {"PartNumber": p.PartNumber, "ETag": p.ETag} for p in sorted(body.parts, key=lambda p: p.PartNumber)
    ]
    upload = await direct.complete(principal, key, upload_id, parts)
    if upload.state == "failed":
        raise ProblemError("upload.too_large", upload.failure_reason)
    assert direct.s3 is not None
    return Completed(
        location=direct.s3.location(upload.storage_key),
        key=key,
        bucket=direct.s3.bucket,
        upload_id=upload.id,
        state=upload.state,
    )


@router.delete("/multipart/{upload_id}")
async def abort_multipart_upload(
    request: Request, upload_id: str, principal: Uploading, key: str = _KEY
) -> dict[str, str]:
    """Abort: the parts and the upload go."""
    await direct_of(request).abort(principal, key, upload_id)
    return {}


@router.post("/events", status_code=204)
async def object_stored(request: Request) -> None:
    """S3 or MinIO event notifications (``Records``), with ``Authorization: Bearer
    <UPLOADER_S3_EVENTS_TOKEN>``: every object created for a direct upload completes it."""
    token = request.app.state.settings.s3_events_token
    if token is None:
        raise ProblemError("request.not_found", "S3 event notifications are not enabled")
    presented = request.headers.get("authorization", "")
    if presented.lower().startswith("bearer "):
        presented = presented[7:]
    if not hmac.compare_digest(presented.strip().encode(), token.get_secret_value().encode()):
        raise ProblemError("auth.unauthorized", "a notification must carry the events token")
    try:
        document = await request.json()
        records = document.get("Records") or []
        if not isinstance(records, list):
            raise TypeError("Records is not a list")
    except (ValueError, TypeError, AttributeError) as exc:
        raise ProblemError("request.invalid", f"not an S3 event notification: {exc}") from None
    direct = direct_of(request)
    for record in records[:1000]:
        if not isinstance(record, dict) or "ObjectCreated" not in str(record.get("eventName", "")):
            continue
        s3 = record.get("s3") or {}
        bucket = str((s3.get("bucket") or {}).get("name", ""))
        key = (s3.get("object") or {}).get("key")
        if direct.s3 is not None and bucket == direct.s3.bucket and isinstance(key, str):
            await direct.settle_object(unquote_plus(key))
