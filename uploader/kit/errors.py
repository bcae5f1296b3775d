"""One table of stable error codes, rendered as JSON problem details by one handler."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from uploader.kit.logging import get_logger
from uploader.observability.request_ids import current_request_id
from uploader.storage.base import StorageFull, StorageUnavailable

log = get_logger(__name__)


@dataclass(frozen=True)
class ErrorKind:
    status: int
    title: str
    type_uri: str | None = None  # a registered problem type, where one exists


IANA_PROBLEMS = "https://iana.org/assignments/http-problem-types#"


ERRORS: dict[str, ErrorKind] = {
    "request.invalid": ErrorKind(400, "The request is malformed"),
    "request.not_found": ErrorKind(404, "No such resource"),
    "request.method_not_allowed": ErrorKind(405, "Method not allowed"),
    "request.body_timeout": ErrorKind(408, "The request body stopped arriving"),
    "request.header_too_large": ErrorKind(431, "The request's headers are too large"),
    "request.header_timeout": ErrorKind(408, "The request's headers did not arrive in time"),
    "events.too_many_streams": ErrorKind(429, "Too many event streams open"),
    "auth.unauthorized": ErrorKind(401, "A valid API key or token is required"),
    "auth.invalid_token": ErrorKind(401, "The token is not valid"),
    "auth.token_expired": ErrorKind(401, "The token has expired or is not valid yet"),
    "auth.forbidden": ErrorKind(403, "This credential may not do that"),
    "auth.unavailable": ErrorKind(503, "Credentials cannot be checked right now"),
    "token.exhausted": ErrorKind(403, "The token has made all the files it may"),
    "quota.exceeded": ErrorKind(403, "The quota is used up"),
    "rate.limited": ErrorKind(429, "Too many requests"),
    "hook.rejected": ErrorKind(403, "The application refused this"),  # the hook says which 4xx
    "hook.unavailable": ErrorKind(503, "The application's hook did not answer"),
    "tus.version_unsupported": ErrorKind(412, "Unsupported tus version"),
    "tus.content_type": ErrorKind(415, "PATCH bodies must be application/offset+octet-stream"),
    "tus.header_invalid": ErrorKind(400, "A tus header is malformed"),
    "tus.metadata_invalid": ErrorKind(400, "Upload-Metadata is malformed"),
    "tus.checksum_algorithm": ErrorKind(400, "Unsupported checksum algorithm"),
    "tus.checksum_mismatch": ErrorKind(460, "Checksum mismatch"),
    "tus.concat_invalid": ErrorKind(400, "Upload-Concat is malformed or names unusable uploads"),
    "upload.not_found": ErrorKind(404, "Upload not found"),
    "upload.expired": ErrorKind(410, "Upload expired"),
    "upload.offset_mismatch": ErrorKind(409, "Upload-Offset does not match the upload's offset"),
    "upload.too_large": ErrorKind(413, "Upload exceeds the maximum size"),
    "upload.type_not_allowed": ErrorKind(415, "This type of file is not allowed"),
    "upload.rejected": ErrorKind(410, "The upload was rejected and its bytes removed"),
    "upload.exceeds_length": ErrorKind(413, "Body is longer than the upload's remaining length"),
    "upload.length_required": ErrorKind(400, "Upload-Length or Upload-Defer-Length is required"),
    "upload.length_already_set": ErrorKind(400, "Upload-Length is already set"),
    "upload.final_immutable": ErrorKind(403, "A final upload cannot be modified"),
    "upload.locked": ErrorKind(423, "Upload is in use by another request"),
    "upload.incomplete": ErrorKind(409, "Upload is not complete yet"),
    "upload.processing": ErrorKind(409, "Upload is being processed"),
    "upload.digest_invalid": ErrorKind(400, "Repr-Digest is malformed"),
    "upload.direct": ErrorKind(409, "This upload's bytes go to S3 directly, not through this API"),
    "direct.needs_s3": ErrorKind(404, "Direct uploads need S3 storage"),
    "direct.parts_invalid": ErrorKind(400, "The parts to complete are malformed or not all stored"),
    "processing.disabled": ErrorKind(409, "Processing is turned off on this server"),
    "variant.not_found": ErrorKind(404, "No such variant"),
    "render.signature_invalid": ErrorKind(403, "The render URL's signature is missing or wrong"),
    "render.ops_invalid": ErrorKind(400, "The render operations are not in the grammar or out of bounds"),
    "render.disabled": ErrorKind(404, "Renders are off: no render key is set"),
    "render.unsupported": ErrorKind(409, "This upload cannot be rendered"),
    "form.invalid": ErrorKind(400, "The multipart/form-data body is malformed"),
    "form.truncated": ErrorKind(400, "The form ended before it was complete"),
    "form.no_files": ErrorKind(400, "The form has no file parts"),
    "form.too_many_parts": ErrorKind(413, "The form has too many parts"),
    "form.field_too_large": ErrorKind(413, "A form field is too large"),
    "form.header_too_large": ErrorKind(400, "A part's headers are too large"),
    "ietf.version_unsupported": ErrorKind(400, "Unsupported Upload-Draft-Interop-Version"),
    "ietf.header_invalid": ErrorKind(400, "A resumable-upload header is malformed"),
    "ietf.content_type": ErrorKind(415, "Appends must be application/partial-upload"),
    "ietf.mismatching_offset": ErrorKind(
        409,
        "offset from request does not match offset of resource",
        IANA_PROBLEMS + "mismatching-upload-offset",
    ),
    "ietf.completed_upload": ErrorKind(
        400, "upload is already completed", IANA_PROBLEMS + "completed-upload"
    ),
    "ietf.inconsistent_length": ErrorKind(
        400, "inconsistent length values for upload", IANA_PROBLEMS + "inconsistent-upload-length"
    ),
    "range.not_satisfiable": ErrorKind(416, "Range not satisfiable"),
    "pagination.cursor_invalid": ErrorKind(400, "Pagination cursor is invalid"),
    "storage.full": ErrorKind(507, "Storage is full"),
    "storage.unavailable": ErrorKind(503, "Storage is unavailable"),
    "service.shutting_down": ErrorKind(503, "The server is shutting down"),
    "service.unavailable": ErrorKind(503, "A service this request needs is unavailable"),
    "service.busy": ErrorKind(503, "The server has as many connections open as it takes"),
    "internal": ErrorKind(500, "Internal error"),
}


RETRY_AFTER_SECONDS = "5"


class DependencyUnavailable(ConnectionError):
    """A dependency (the database, Redis) cannot be reached: ``503 service.unavailable``,
    and worth a later retry wherever work is retried."""

    def __init__(self, dependency: str, detail: str) -> None:
        super().__init__(f"{dependency} is unavailable: {detail}")
        self.dependency = dependency
        self.detail = detail[:300]


class ProblemError(Exception):
    """An error with a stable code from ``ERRORS``; becomes a problem-details response."""

    def __init__(
        self,
        code: str,
        detail: str | None = None,
        headers: dict[str, str] | None = None,
        members: dict[str, Any] | None = None,
        status: int | None = None,
    ) -> None:
        """``status``: another status than the code's own (a hook's rejection says which)."""
        if code not in ERRORS:
            raise KeyError(f"unknown error code {code}")
        super().__init__(detail or ERRORS[code].title)
        self.code = code
        self.detail = detail or ERRORS[code].title
        self.headers = headers or {}
        self.members = members or {}  # extension members of the problem document
        self._status = status

    @property
    def status(self) -> int:
        return self._status or ERRORS[self.code].status


def problem_response(
    request: Request,
    code: str,
    detail: str,
    headers: dict[str, str] | None = None,
    members: dict[str, Any] | None = None,
    status: int | None = None,
) -> Response:
    kind = ERRORS[code]
    status = status or kind.status
    body: dict[str, Any] = {
        "type": kind.type_uri or f"https://uploader.dev/problems/{code}",
        "title": kind.title,
        "status": status,
        "detail": detail,
        "code": code,
        "instance": request.url.path,
        "request_id": current_request_id.get(),
        **(members or {}),
    }
    if request.url.path.startswith("/s3/"):
        body["error"] = detail  # the Companion routes: what @uppy/aws-s3 expects of an error
    all_headers = dict(headers or {})
    tus_path: str = getattr(request.app.state, "tus_path", "/files/")
    if request.url.path.startswith(tus_path.rstrip("/")):
        if "upload-draft-interop-version" in request.headers:
            all_headers.setdefault(
                "Upload-Draft-Interop-Version", request.headers["upload-draft-interop-version"]
            )
        else:
            all_headers.setdefault("Tus-Resumable", "1.0.0")
    if request.method == "HEAD":
        # HEAD responses carry no body, but keep the headers.
        return Response(status_code=status, headers=all_headers)
    return JSONResponse(body, status_code=status, headers=all_headers, media_type="application/problem+json")


_STATUS_CODES = {400: "request.invalid", 404: "request.not_found", 405: "request.method_not_allowed"}


def install_error_handlers(app: FastAPI) -> None:
    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProblemError)
        return problem_response(request, exc.code, exc.detail, exc.headers, exc.members, exc.status)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return problem_response(request, "request.invalid", "; ".join(parts)[:2000])

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = _STATUS_CODES.get(exc.status_code, "request.invalid")
        return problem_response(request, code, str(exc.detail), dict(exc.headers or {}))

    async def on_storage(request: Request, exc: Exception) -> Response:
        code = "storage.full" if isinstance(exc, StorageFull) else "storage.unavailable"
        log.warning("storage.failed", path=request.url.path, error=str(exc)[:500])
        return problem_response(request, code, str(exc)[:500], {"Retry-After": RETRY_AFTER_SECONDS})

    async def on_dependency(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, DependencyUnavailable)
        log.warning(
            "dependency.unavailable", dependency=exc.dependency, path=request.url.path, error=exc.detail
        )
        detail = f"{exc.dependency} is unavailable: {exc.detail}"
        return problem_response(
            request,
            "service.unavailable",
            detail,
            {"Retry-After": RETRY_AFTER_SECONDS},
            {"dependency": exc.dependency},
        )

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("request.failed", path=request.url.path, method=request.method)
        return problem_response(request, "internal", "An unexpected error occurred")

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(StorageUnavailable, on_storage)
    app.add_exception_handler(StorageFull, on_storage)
    app.add_exception_handler(DependencyUnavailable, on_dependency)
    app.add_exception_handler(Exception, on_unexpected)
