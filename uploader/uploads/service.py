"""Protocol-agnostic upload operations: create, append, terminate, concatenate, expire.

Protocol handlers parse and validate their headers, then call these methods; storage
backends know nothing of HTTP. The recorded offset only advances after the bytes are
in storage, and advances during a long write too (checkpoints).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial
from typing import Any

from uploader.auth.principal import Principal
from uploader.db.models import ConcatRole, Upload, UploadState, utcnow
from uploader.kit.errors import DependencyUnavailable, ProblemError
from uploader.kit.logging import get_logger
from uploader.observability import metrics
from uploader.processing.steps.sniff import sniff
from uploader.quotas.admission import Admitted
from uploader.storage.base import (
    AlreadyFinished,
    LengthDeclarableUpload,
    StorageFull,
    StoredUpload,
    WriteProgress,
)
from uploader.uploads import repository
from uploader.uploads.body import BodyTooLong, RequestBody
from uploader.uploads.concatenation import Concatenation
from uploader.uploads.core import (
    DIRECT_PROTOCOL,
    MAX_RUNNING_DIGESTS,
    Checksum,
    ReceivedFile,
    _superseded,
    event_data,
    new_storage_key,
    new_upload_id,
)
from uploader.uploads.locks import LeaseLost, LockHolder
from uploader.uploads.metadata import declared_type_of, encode_value, filename_of
from uploader.uploads.removal import Removal

log = get_logger(__name__)


__all__ = [
    "Checksum",
    "ReceivedFile",
    "UploadService",
    "event_data",
    "new_storage_key",
    "new_upload_id",
]


class UploadService(Concatenation, Removal):
    """The upload service: creating, writing and reprocessing uploads; completion,
    concatenation and removal come from its bases."""

    async def create(
        self,
        principal: Principal,
        length: int | None,
        meta: dict[str, str | None],
        concat_role: ConcatRole = ConcatRole.NONE,
        concat_parts: list[str] | None = None,
        *,
        admitted: Admitted | None = None,
        state: UploadState = UploadState.CREATED,
        begin: Callable[[Upload], Awaitable[object]] | None = None,
        declared_sha256: str | None = None,
    ) -> Upload:
        """A new upload of ``principal``'s, within its limits (``admitted``: already
        checked by the caller). ``begin``: what starts its storage, given the new upload,
        when the bytes do not come through this server (direct uploads to S3).
        ``declared_sha256``: the whole file's digest as the client declared it; when the
        owner already holds a ready upload of those bytes, the new one shares them and is
        complete at once (``link_duplicate``); else the bytes must match it."""
        if length is not None and length > self.settings.max_upload_size:
            raise ProblemError("upload.too_large", f"Upload-Length exceeds {self.settings.max_upload_size}")
        if admitted is None:
            is_part = concat_role == ConcatRole.PARTIAL
            admitted = await self.admission.admit(principal, length, meta, partial=is_part)
        meta = admitted.meta
        upload_id = new_upload_id()
        now = utcnow()
        upload = Upload(
            id=upload_id,
            owner=principal.name,
            state=state,
            length=length,
            offset=0,
            storage_key=new_storage_key(),
            meta=meta,
            filename=filename_of(meta),
            declared_type=declared_type_of(meta),
            concat_role=concat_role,
            concat_parts=concat_parts,
            sha256=None,
            failure_reason=None,
            created_at=now,
            updated_at=now,
            expires_at=self._expiry_from_now(),
            completed_at=None,
            allowed_types=admitted.allowed_types,
            size_limit=admitted.size_limit,
            protocol=metrics.current_protocol.get(),
            declared_sha256=declared_sha256,
        )
        if concat_role != ConcatRole.PARTIAL:  # a part is a piece of a file: its final is asked
            await self.before_create(upload)
        if await self._link_duplicate(principal, admitted, upload):
            return upload
        started = begin(upload) if begin else self.store.create(upload.storage_key, length)
        await self._storage(started)
        try:
            await self.db.run(
                partial(self._insert_admitted, principal=principal, admitted=admitted, new=[upload]),
                # One insert (a new upload has no webhook event), unless a quota counts it.
                transaction=admitted.counted,
            )
        except ProblemError:
            await self._discard_stored(upload.storage_key)
            raise
        if self._unwritten is not None and begin is None and concat_role != ConcatRole.FINAL and length != 0:
            self._unwritten[upload_id] = upload
            while len(self._unwritten) > MAX_RUNNING_DIGESTS:
                self._unwritten.popitem(last=False)
        log.debug("upload.created", upload_id=upload_id, length=length, concat=concat_role)
        if concat_role != ConcatRole.PARTIAL:
            metrics.UPLOADS_CREATED.labels(metrics.current_protocol.get()).inc()
        await self._publish(upload, "upload.created")
        if length == 0:
            await self._complete(upload, await self.store.find(upload.storage_key), upload.writer_generation)
            await self._after_complete(upload)
        return upload

    async def _link_duplicate(self, principal: Principal, admitted: Admitted, draft: Upload) -> bool:
        """Deduplication: when the owner already holds a ready upload whose SHA-256 (which
        this server computed) and length are the declared ones, record ``draft`` complete
        at once, sharing that upload's stored object and what processing found. One
        insert is the whole link: nothing is stored, so no crash leaves half of one."""
        digest = draft.declared_sha256
        if (
            digest is None
            or draft.length is None
            or self.settings.dedup != "owner"
            or draft.concat_role != ConcatRole.NONE
            or draft.allowed_types is not None  # the token limits types: its own check runs
        ):
            return False

        def link(connection: Any) -> bool:
            assert draft.length is not None
            source = repository.duplicate_of(connection, draft.owner, digest, draft.length)
            if source is None:
                return False
            now = utcnow()
            draft.storage_key = source.storage_key
            draft.state = UploadState.READY
            draft.offset = draft.length
            draft.sha256 = source.sha256
            draft.detected_type = source.detected_type
            draft.processing = source.processing
            draft.media = source.media
            draft.variants = source.variants
            draft.completed_at = now
            draft.expires_at = None
            self._insert_admitted(connection, principal=principal, admitted=admitted, new=[draft])
            return True

        if not await self.db.run(link):
            return False
        protocol = metrics.current_protocol.get()
        metrics.UPLOADS_CREATED.labels(protocol).inc()
        metrics.UPLOADS_FINISHED.labels(protocol).inc()
        log.info(
            "upload.deduplicated", upload_id=draft.id, length=draft.length, storage_key=draft.storage_key
        )
        await self._publish(draft, "upload.created")
        await self._publish(draft, "upload.received", state=str(UploadState.RECEIVED))
        await self._publish(draft, "upload.ready")
        return True

    async def before_create(self, draft: Upload) -> dict[str, str | None]:
        """The pre-create hook, before anything is stored: it may refuse the upload (its
        error propagates) or add metadata to it; returns what it added (as stored)."""
        if self.hooks is None or not self.hooks.wants("pre-create"):
            return {}
        answer = await self.hooks.ask("pre-create", draft, draft.owner)
        added: dict[str, str | None] = {key: encode_value(value) for key, value in answer.metadata.items()}
        if added:
            draft.meta = {**draft.meta, **added}
            draft.filename, draft.declared_type = filename_of(draft.meta), declared_type_of(draft.meta)
        return added

    def _insert_admitted(
        self, connection: Any, *, principal: Principal, admitted: Admitted, new: list[Upload]
    ) -> None:
        for upload in new:
            repository.insert(connection, upload)
            self._report(connection, upload)
        if admitted.counted:  # after the insert: its usage row now holds them, and is held
            self.admission.reserve(
                connection, principal, [upload.length for upload in new], files=admitted.files
            )

    async def add_received(
        self, principal: Principal, files: list[ReceivedFile], admitted: Admitted
    ) -> list[Upload]:
        """Uploads whose bytes are already stored and finished (the files of a form):
        recorded together in one transaction (which counts them against the principal's
        files and quota; over, the caller removes their bytes), then processed as
        completed tus uploads are."""
        owner = principal.name
        now = utcnow()
        state = UploadState.RECEIVED if self.processor is not None else UploadState.READY
        uploads = [
            Upload(
                id=file.upload_id or new_upload_id(),
                owner=owner,
                state=state,
                length=file.length,
                offset=file.length,
                storage_key=file.storage_key,
                meta={**file.meta, **admitted.meta},
                filename=filename_of(file.meta),
                declared_type=declared_type_of(file.meta),
                sha256=file.sha256,
                created_at=now,
                updated_at=now,
                completed_at=now,
                allowed_types=admitted.allowed_types,
                size_limit=admitted.size_limit,
                protocol="form",
            )
            for file in files
        ]
        for upload in uploads:  # stored whole, not recorded: nothing to undo but the bytes
            if self.hooks is not None and self._asks_pre_finish(upload):
                head = await self._head_of(upload, upload.length or 0)
                asked = replace(upload, state=UploadState.RECEIVING, detected_type=sniff(head))
                await self.hooks.ask("pre-finish", asked, owner)
        await self.db.run(partial(self._insert_admitted, principal=principal, admitted=admitted, new=uploads))
        metrics.UPLOADS_CREATED.labels("form").inc(len(uploads))
        metrics.UPLOADS_FINISHED.labels("form").inc(len(uploads))
        for upload in uploads:
            log.info("upload.received", upload_id=upload.id, length=upload.length, via="form")
            await self._publish(upload, "upload.created")
            await self._publish(upload, "upload.received")
            if state == UploadState.READY:
                await self._publish(upload, "upload.ready")
            await self._after_complete(upload)
        return uploads

    async def create_final(
        self, principal: Principal, part_ids: list[str], meta: dict[str, str | None]
    ) -> Upload:
        """Concatenation: a final upload made of the caller's partial uploads, in order."""
        owner = principal.name
        found = {u.id: u for u in await self.db.run(lambda s: repository.get_many(s, part_ids))}
        parts: list[Upload] = []
        for part_id in part_ids:
            part = found.get(part_id)
            if part is None or part.owner != owner or part.is_gone:
                raise ProblemError("tus.concat_invalid", f"no partial upload {part_id}")
            if part.concat_role != ConcatRole.PARTIAL:
                raise ProblemError("tus.concat_invalid", f"upload {part_id} is not a partial upload")
            parts.append(part)
        lengths = [p.length for p in parts]
        known = sum(n for n in lengths if n is not None)
        # The parts whose length is known already may add up to too much (the same part
        # named many times, say): refused before anything is created or copied.
        if known > self.settings.max_upload_size:
            raise ProblemError(
                "upload.too_large", f"the parts add up to more than {self.settings.max_upload_size}"
            )
        total = None if None in lengths else known
        upload = await self.create(principal, total, meta, ConcatRole.FINAL, concat_parts=part_ids)
        if upload.state == UploadState.CREATED:
            await self._try_finish_final(upload)
        return await self.get(owner, upload.id, allow_gone=True)

    async def append(
        self,
        owner: str,
        upload_id: str,
        offset: int,
        body: RequestBody,
        *,
        content_length: int | None = None,
        declared_length: int | None = None,
        checksum: Checksum | None = None,
    ) -> Upload:
        async with self._locked(upload_id) as holder:
            upload = await self._for_writing(owner, upload_id, holder)
            was_complete = upload.is_complete
            try:
                if upload.concat_role == ConcatRole.FINAL:
                    raise ProblemError("upload.final_immutable", "PATCH is not allowed on a final upload")
                if upload.protocol == DIRECT_PROTOCOL:
                    raise ProblemError("upload.direct")
                if declared_length is not None:
                    await self._declare_length(upload, declared_length, holder.generation)
                if offset != upload.offset:
                    raise ProblemError(
                        "upload.offset_mismatch",
                        f"Upload-Offset is {offset} but the upload is at {upload.offset}",
                        headers={"Upload-Offset": str(upload.offset)},
                    )
                room = (upload.length if upload.length is not None else self.size_limit(upload)) - offset
                if content_length is not None and content_length > room:
                    raise ProblemError(
                        "upload.exceeds_length", f"{content_length} bytes sent, {room} bytes left"
                    )
                # Nothing to write once complete: an empty PATCH at the end, or a declared
                # length that equals the offset.
                if not upload.is_complete:
                    body.limit = room
                    body.hasher = checksum.hasher if checksum else None
                    holder.on_interrupt(body.interrupt)
                    body.watch_idle(self.settings.body_idle_timeout_seconds)
                    metrics.PATCHES_IN_FLIGHT.inc()
                    try:
                        await self._write(upload, offset, body, checksum, holder)
                    finally:
                        metrics.PATCHES_IN_FLIGHT.dec()
                        body.stop_watching()
            finally:
                await self._end_claim(upload, holder.generation)
        if self._completed_now(upload, was_complete):
            await self._after_complete(upload)
        if body.idle:
            metrics.REQUEST_TIMEOUTS.labels("body").inc()
            raise ProblemError(
                "request.body_timeout",
                f"nothing arrived for {self.settings.body_idle_timeout_seconds:g} s; what did is recorded",
                headers={"Upload-Offset": str(upload.offset), "Connection": "close"},
            )
        return upload

    async def _write(
        self, upload: Upload, offset: int, body: RequestBody, checksum: Checksum | None, holder: LockHolder
    ) -> None:
        stored = await self.store.find(upload.storage_key)
        progress = WriteProgress()
        digest = self._digest_at(upload.id, offset) if self._digest_inline(upload) else None
        generation = holder.generation

        async def checkpoint(durable_offset: int) -> None:
            # Progress only: the whole length is recorded by the completion, never as a bare
            # offset (clients take offset == length for done).
            if upload.length is not None and durable_offset >= upload.length:
                return
            fields = {
                "offset": durable_offset,
                "state": UploadState.RECEIVING,
                "expires_at": self._expiry_from_now(),
            }
            try:
                recorded = await self.db.run(
                    lambda s: repository.record_write(s, upload, generation, **fields)
                )
            except (DependencyUnavailable, StorageFull) as exc:
                # The bytes keep coming; the write's own record at its end is what counts.
                log.warning(
                    "upload.checkpoint_failed", upload_id=upload.id, offset=durable_offset, error=str(exc)
                )
                return
            if not recorded:
                holder.lose()
                raise LeaseLost
            await self._publish(upload, "upload.progress")

        # With a checksum nothing of the request may count until it is verified.
        try:
            await stored.write_chunk(offset, body, progress, None if checksum else checkpoint, digest, holder)
        except BodyTooLong:
            await self._rollback(upload, stored, offset, generation)
            raise ProblemError(
                "upload.exceeds_length", f"the body is longer than the {body.limit} bytes left"
            ) from None
        except LeaseLost:
            raise _superseded() from None
        except AlreadyFinished:
            # Stored whole before by a request that could not record it: record it now.
            assert upload.length is not None
            await self._complete(upload, stored, generation, offset=upload.length)
            return
        except BaseException:
            # Keep what is durable (a client that vanished resumes from here), then fail.
            if checksum is None and progress.written:
                with contextlib.suppress(Exception):
                    await self._record_progress(upload, stored, offset + progress.written, generation)
            raise
        if checksum is not None and (
            body.interrupted or body.disconnected or checksum.hasher.digest() != checksum.expected
        ):
            await self._rollback(upload, stored, offset, generation)
            if body.interrupted or body.disconnected:
                return
            raise ProblemError("tus.checksum_mismatch", f"the body's {checksum.algorithm} does not match")
        new_offset = offset + progress.written
        if digest is not None and digest.covered == new_offset:
            self._keep_digest(upload.id, digest)
        await self._record_progress(upload, stored, new_offset, generation, retry=True)
        log.debug("upload.chunk_written", upload_id=upload.id, offset=new_offset, bytes=progress.written)
        if not upload.is_complete:
            await self._publish(upload, "upload.progress")

    async def _record_progress(
        self, upload: Upload, stored: StoredUpload, new_offset: int, generation: int, *, retry: bool = False
    ) -> None:
        """Record where a write ended: the completion when it reached the length (and never
        the length alone), else the offset."""
        if upload.length is not None and new_offset == upload.length:
            await self._complete(upload, stored, generation, retry=retry, offset=new_offset)
            return
        fields = {
            "offset": new_offset,
            "state": UploadState.RECEIVING if new_offset else upload.state,
            "expires_at": self._expiry_from_now(),
            **self._write_ended(),
        }
        await self._record(upload, generation, fields, retry=retry)

    async def _rollback(self, upload: Upload, stored: StoredUpload, offset: int, generation: int) -> None:
        await stored.discard_from(offset)
        if upload.offset != offset:
            await self._record(upload, generation, {"offset": offset, **self._write_ended()})

    async def complete_at_offset(self, owner: str, upload_id: str) -> Upload:
        """The client says every byte has been sent: the upload's length is its offset now."""
        async with self._locked(upload_id) as holder:
            upload = await self._for_writing(owner, upload_id, holder)
            was_complete = upload.is_complete
            try:
                if not was_complete:
                    if upload.length is not None and upload.length != upload.offset:
                        raise ProblemError(
                            "ietf.inconsistent_length",
                            f"the upload is {upload.length} bytes long but only {upload.offset} arrived",
                        )
                    await self._declare_length(upload, upload.offset, holder.generation)
            finally:
                await self._end_claim(upload, holder.generation)
        if self._completed_now(upload, was_complete):
            await self._after_complete(upload)
        return upload

    async def _declare_length(self, upload: Upload, length: int, generation: int) -> None:
        if upload.length is not None:
            if upload.length != length:
                raise ProblemError("upload.length_already_set")
            return
        if length < upload.offset:
            raise ProblemError("tus.header_invalid", "Upload-Length is below the current offset")
        if length > self.size_limit(upload):
            raise ProblemError(
                "upload.too_large", f"this upload may have {self.size_limit(upload)} bytes at most"
            )
        stored = await self.store.find(upload.storage_key)
        if isinstance(stored, LengthDeclarableUpload):
            await stored.declare_length(length)
        if length == upload.offset:
            await self._complete(upload, stored, generation, length=length)
        else:
            await self._record(upload, generation, {"length": length})

    async def reprocess(self, owner: str | None, upload_id: str) -> Upload:
        """Run the pipeline again on a ready or failed upload."""
        if self.processor is None:
            raise ProblemError("processing.disabled")
        async with self._locked(upload_id):
            upload = await self.get(owner, upload_id)
            if upload.concat_role == ConcatRole.PARTIAL:
                raise ProblemError(
                    "request.invalid", "partial uploads are processed as part of their final upload"
                )
            if not upload.is_complete:
                raise ProblemError("upload.incomplete", f"{upload.offset} of {upload.length} bytes received")
            previous = upload.state
            if previous not in (UploadState.READY, UploadState.FAILED) or not await self.db.run(
                lambda s: repository.set_fields_if_state(
                    s, upload, previous, state=UploadState.RECEIVED, failure_reason=None, processing=None
                )
            ):
                raise ProblemError("upload.processing")
        log.info("upload.reprocessing", upload_id=upload.id, previous=previous)
        await self._publish(upload, "upload.reprocessing")
        await self.processor.submit(upload)
        return upload
