"""Multipart forms at ``POST /api/v1/uploads``: files from a ``multipart/form-data`` body,
streamed to storage.

Every file part goes straight into a new stored object as it arrives. The uploads are
recorded only once the whole form has arrived: a request cut off half-way (or refused
for a part too large) removes what it stored and leaves no upload behind.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from uploader.auth.dependencies import CurrentPrincipal
from uploader.auth.principal import Principal
from uploader.db.models import Upload
from uploader.kit.errors import ProblemError
from uploader.protocols.form_reader import FormReader
from uploader.storage.base import RunningDigest, StoredUpload, TerminatableUpload, WriteProgress
from uploader.uploads.body import BodyTooLong, RequestBody
from uploader.uploads.dependencies import service_of
from uploader.uploads.metadata import declared_type_of, encode_value, filename_of
from uploader.uploads.schemas import UploadStatus
from uploader.uploads.service import ReceivedFile, UploadService, new_storage_key, new_upload_id

router = APIRouter(prefix="/api/v1/uploads", tags=["uploads"])
MAX_FILES = 100


@router.post("", status_code=201, responses={201: {"description": "The created uploads"}})
async def upload_form(request: Request, principal: CurrentPrincipal) -> JSONResponse:
    """Upload one or more files as ``multipart/form-data`` (``curl -F file=@photo.jpg``).

    Other form fields become metadata of every file of the request. Processing starts
    as for tus uploads."""
    service = service_of(request)
    # The rate, the scope and the token's forced metadata, before a byte is read; its
    # size and types apply per file as each part begins; its files and the quota when
    # the form is recorded.
    admitted = await service.admission.admit(principal, None, {}, per_file=True)
    reader = FormReader(request.headers.get("content-type"), request.stream())
    stored: list[StoredUpload] = []
    # Storage failures reach the error handlers (503 storage.unavailable, 507 storage.full).
    try:
        files = await _receive(service, reader, stored, principal)
        uploads = await service.add_received(principal, files, admitted)
    except BaseException:
        for leftover in stored:  # nothing of a failed form stays behind
            if isinstance(leftover, TerminatableUpload):
                with contextlib.suppress(Exception):
                    await leftover.terminate()
        raise
    tus_path = request.app.state.settings.tus_path
    body = {"uploads": [UploadStatus.of(u, tus_path).model_dump(mode="json") for u in uploads]}
    return JSONResponse(body, status_code=201)


async def _receive(
    service: UploadService, reader: FormReader, stored: list[StoredUpload], principal: Principal
) -> list[ReceivedFile]:
    fields: dict[str, str] = {}
    files: list[ReceivedFile] = []
    limit = service.admission.max_size_of(principal, service.settings.max_upload_size)
    while (part := await reader.next_part()) is not None:
        if part.filename is None:
            fields[part.name] = await reader.field_value()
            continue
        if len(files) >= MAX_FILES:
            raise ProblemError("form.too_many_parts", f"more than {MAX_FILES} files in one form")
        service.admission.check_type(principal, part.content_type)
        key = new_storage_key()
        meta: dict[str, str | None] = {"filename": encode_value(part.filename)}
        if part.content_type:
            meta["filetype"] = encode_value(part.content_type)
        # The pre-create hook is asked as each file begins, before a byte of it is stored
        # (the form's fields so far go with it).
        draft = Upload(
            id=new_upload_id(),
            owner=principal.name,
            storage_key=key,
            meta={**{n: encode_value(v) for n, v in fields.items()}, **meta},
            filename=filename_of(meta),
            declared_type=declared_type_of(meta),
        )
        meta.update(await service.before_create(draft))
        target = await service.store.create(key, None)
        stored.append(target)
        body = RequestBody(reader.data(), limit)
        digest = RunningDigest()
        try:
            written = await target.write_chunk(0, body, WriteProgress(), None, digest)
        except BodyTooLong:
            raise ProblemError("upload.too_large", f"a file is over the {limit}-byte limit") from None
        if body.disconnected:
            raise ProblemError("form.truncated", "the client went away in the middle of a file")
        await target.finish(written)
        files.append(
            ReceivedFile(
                storage_key=key, length=written, sha256=digest.hexdigest(), meta=meta, upload_id=draft.id
            )
        )
    if not files:
        raise ProblemError("form.no_files", "the form has no file parts")
    # Fields may come after the files: every file gets them all once the form is read.
    shared = {name: encode_value(value) for name, value in fields.items()}
    return [replace(file, meta={**shared, **file.meta}) for file in files]
