"""tus 1.0.0 at ``/files/``: core, creation (with upload, deferred length), termination,
expiration, checksum and concatenation (including unfinished parts). Requests carrying
``Upload-Draft-Interop-Version`` are the IETF draft's, handled by ``ietf``."""

from __future__ import annotations

from email.utils import format_datetime

from fastapi import APIRouter, Request
from starlette.responses import Response

from uploader.auth.dependencies import CurrentPrincipal
from uploader.auth.principal import DELETE, READ, UPLOAD
from uploader.db.models import ConcatRole, Upload
from uploader.downloads.responses import content_response
from uploader.kit.errors import ProblemError
from uploader.protocols import ietf
from uploader.protocols.tus_headers import (
    CHECKSUM_ALGORITHMS,
    TUS_EXTENSIONS,
    TUS_VERSION,
    encode_metadata,
    parse_checksum,
    parse_concat,
    parse_metadata,
    parse_repr_digest,
    parse_uint,
)
from uploader.uploads.body import RequestBody, empty_body, has_body
from uploader.uploads.dependencies import checked_upload_id, service_of

OFFSET_STREAM = "application/offset+octet-stream"


def require_tus(request: Request) -> None:
    if request.headers.get("tus-resumable", "").strip() != TUS_VERSION:
        raise ProblemError(
            "tus.version_unsupported",
            f"send Tus-Resumable: {TUS_VERSION}",
            headers={"Tus-Version": TUS_VERSION},
        )


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def upload_headers(upload: Upload, tus_path: str) -> dict[str, str]:
    headers = {"Tus-Resumable": TUS_VERSION, "Cache-Control": "no-store"}
    concat_waiting = upload.concat_role == ConcatRole.FINAL and not upload.is_complete
    if not concat_waiting:
        headers["Upload-Offset"] = str(upload.offset)
    if upload.length is not None:
        headers["Upload-Length"] = str(upload.length)
    elif upload.concat_role != ConcatRole.FINAL:
        headers["Upload-Defer-Length"] = "1"
    if upload.meta:
        headers["Upload-Metadata"] = encode_metadata(upload.meta)
    if upload.concat_role == ConcatRole.PARTIAL:
        headers["Upload-Concat"] = "partial"
    elif upload.concat_role == ConcatRole.FINAL:
        parts = " ".join(f"{tus_path}{part}" for part in upload.concat_parts or [])
        headers["Upload-Concat"] = f"final;{parts}"
    if upload.expires_at is not None:
        headers["Upload-Expires"] = format_datetime(upload.expires_at, usegmt=True)
    return headers


def build_tus_router(tus_path: str) -> APIRouter:
    router = APIRouter(tags=["tus"])
    collection = tus_path
    resource = tus_path + "{upload_id}"

    def location_of_id(request: Request) -> str:
        base = request.app.state.settings.public_url or str(request.base_url)
        return f"{base.rstrip('/')}{tus_path}"

    def location_of(request: Request, upload: Upload) -> str:
        return location_of_id(request) + upload.id

    @router.options(collection, status_code=204, operation_id="discover_tus")
    @router.options(resource, status_code=204, operation_id="discover_tus_upload")
    async def discover(request: Request) -> Response:
        """Server capabilities: version, extensions, maximum size, checksum algorithms."""
        return Response(
            status_code=204,
            headers={
                "Tus-Resumable": TUS_VERSION,
                "Tus-Version": TUS_VERSION,
                "Tus-Extension": TUS_EXTENSIONS,
                "Tus-Max-Size": str(request.app.state.settings.max_upload_size),
                "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
                **ietf.options_headers(request),
            },
        )

    @router.post(collection, status_code=201)
    async def create(request: Request, principal: CurrentPrincipal) -> Response:
        """Create an upload (optionally with its first bytes, or as a concatenation)."""
        principal.require(UPLOAD)
        if version := ietf.interop_version(request):
            return await ietf.create(request, principal, version, location_of_id(request))
        require_tus(request)
        service = service_of(request)
        headers = request.headers
        concat = parse_concat(headers.get("upload-concat"), tus_path)
        meta = parse_metadata(headers.get("upload-metadata"))
        content_length = parse_uint(headers.get("content-length"), "Content-Length")
        with_body = has_body(request.headers, content_length)
        if with_body and _media_type(request) != OFFSET_STREAM:
            raise ProblemError("tus.content_type")
        if concat is not None and concat[0] == "final":
            if with_body:
                raise ProblemError("upload.final_immutable", "a final upload takes no body")
            upload = await service.create_final(principal, concat[1], meta)
            return Response(
                status_code=201,
                headers={**upload_headers(upload, tus_path), "Location": location_of(request, upload)},
            )
        length = parse_uint(headers.get("upload-length"), "Upload-Length")
        defer = headers.get("upload-defer-length")
        if defer is not None and defer.strip() != "1":
            raise ProblemError("tus.header_invalid", "Upload-Defer-Length must be 1")
        if length is None and defer is None:
            raise ProblemError("upload.length_required")
        if length is not None and defer is not None:
            raise ProblemError("tus.header_invalid", "send Upload-Length or Upload-Defer-Length, not both")
        checksum = parse_checksum(headers.get("upload-checksum")) if with_body else None
        role = ConcatRole.PARTIAL if concat is not None else ConcatRole.NONE
        digest = parse_repr_digest(headers.get("repr-digest")) if length is not None else None
        upload = await service.create(principal, length, meta, role, declared_sha256=digest)
        if with_body and not upload.is_complete:  # complete: deduplicated, nothing to send
            body = RequestBody(request.stream(), limit=0)
            try:
                upload = await service.append(
                    principal.name,
                    upload.id,
                    0,
                    body,
                    content_length=content_length,
                    checksum=checksum,
                )
            except ProblemError as exc:
                if exc.code in ("tus.checksum_mismatch", "upload.exceeds_length"):
                    await service.terminate(principal.name, upload.id, ask_hook=False)
                raise
        return Response(
            status_code=201,
            headers={**upload_headers(upload, tus_path), "Location": location_of(request, upload)},
        )

    @router.head(resource)
    async def head(request: Request, upload_id: str, principal: CurrentPrincipal) -> Response:
        """The upload's offset, length and metadata."""
        principal.require(UPLOAD, READ)
        if version := ietf.interop_version(request):
            return await ietf.head(request, principal, version, upload_id)
        require_tus(request)
        upload = await service_of(request).get_settled(principal.name, checked_upload_id(upload_id))
        return Response(status_code=200, headers=upload_headers(upload, tus_path))

    @router.patch(resource, status_code=204)
    async def append(request: Request, upload_id: str, principal: CurrentPrincipal) -> Response:
        """Append bytes at Upload-Offset."""
        principal.require(UPLOAD)
        if version := ietf.interop_version(request):
            return await ietf.append(request, principal, version, upload_id)
        require_tus(request)
        if _media_type(request) != OFFSET_STREAM:
            raise ProblemError("tus.content_type")
        headers = request.headers
        offset = parse_uint(headers.get("upload-offset"), "Upload-Offset")
        if offset is None:
            raise ProblemError("tus.header_invalid", "Upload-Offset is required")
        declared_length = parse_uint(headers.get("upload-length"), "Upload-Length")
        content_length = parse_uint(headers.get("content-length"), "Content-Length")
        checksum = parse_checksum(headers.get("upload-checksum"))
        source = request.stream() if has_body(request.headers, content_length) else empty_body()
        upload = await service_of(request).append(
            principal.name,
            checked_upload_id(upload_id),
            offset,
            RequestBody(source, limit=0),
            content_length=content_length,
            declared_length=declared_length,
            checksum=checksum,
        )
        response_headers = {"Tus-Resumable": TUS_VERSION, "Upload-Offset": str(upload.offset)}
        if upload.expires_at is not None:
            response_headers["Upload-Expires"] = format_datetime(upload.expires_at, usegmt=True)
        return Response(status_code=204, headers=response_headers)

    @router.delete(resource, status_code=204)
    async def terminate(request: Request, upload_id: str, principal: CurrentPrincipal) -> Response:
        """Terminate the upload and remove its bytes (a finished one: with the delete scope)."""
        principal.require(UPLOAD, DELETE)
        version = ietf.interop_version(request)
        if version is None:
            require_tus(request)
        await service_of(request).terminate(
            principal.name, checked_upload_id(upload_id), may_delete_finished=principal.has(DELETE)
        )
        if version is not None:
            return Response(status_code=204, headers={"Upload-Draft-Interop-Version": version})
        return Response(status_code=204, headers={"Tus-Resumable": TUS_VERSION})

    @router.get(resource)
    async def download(request: Request, upload_id: str, principal: CurrentPrincipal) -> Response:
        """The uploaded bytes (as the content endpoint serves them)."""
        principal.require(READ)
        service = service_of(request)
        upload = await service.get(principal.owner_filter, checked_upload_id(upload_id))
        return await content_response(request, upload, service.store)

    return router
