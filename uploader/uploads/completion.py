"""Completing an upload: the stored object is finished, the pre-finish hook (when one is
configured) is asked with no lock held, and the completion is recorded with its webhook
events; then processing, or the final upload a part belongs to, goes on."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from uploader.db.models import ConcatRole, Upload, UploadState, utcnow
from uploader.kit.errors import DependencyUnavailable, ProblemError
from uploader.kit.logging import get_logger
from uploader.observability import metrics
from uploader.processing.steps.sniff import SNIFF_BYTES, sniff
from uploader.storage.base import (
    RunningDigest,
    StoredUpload,
)
from uploader.uploads import repository
from uploader.uploads.core import AwaitingFinish, ServiceCore, _mirror

log = get_logger(__name__)


class Completion(ServiceCore):
    """Completion of uploads, and the pre-finish hook."""

    async def _complete(
        self, upload: Upload, stored: StoredUpload, generation: int, *, retry: bool = False, **fields: Any
    ) -> None:
        """Finish the stored object, then record the upload as received (with ``fields``);
        with a pre-finish hook, the record waits for its answer (``_after_complete``)."""
        length = fields.get("length", upload.length)
        assert length is not None
        await self._storage(stored.finish(length))
        digest = self._digests.pop(upload.id, None)
        if length == 0:
            digest = RunningDigest()
        whole = digest is not None and digest.covered == length
        sha256 = digest.hexdigest() if digest is not None and whole else None
        head = digest.head if digest is not None and whole else None
        if self._asks_pre_finish(upload):
            # Stored whole, recorded once the hook agrees. Until then the row keeps its
            # offset: a crash here leaves a resumable upload whose next PATCH finds the
            # object finished and comes back here.
            upload.awaiting_finish = AwaitingFinish(fields, sha256, head, upload.offset, retry)
            return
        await self._record_completion(upload, generation, fields, sha256, head, retry=retry)

    def _asks_pre_finish(self, upload: Upload) -> bool:
        return (
            self.hooks is not None
            and self.hooks.wants("pre-finish")
            and upload.concat_role != ConcatRole.PARTIAL  # its final upload is asked
        )

    async def _record_completion(
        self,
        upload: Upload,
        generation: int,
        fields: dict[str, Any],
        sha256: str | None,
        head: bytes | None,
        *,
        retry: bool = False,
    ) -> None:
        length = fields.get("length", upload.length)
        # Partial uploads exist to be concatenated: they expire like unfinished ones.
        expires = self._expiry_from_now() if upload.concat_role == ConcatRole.PARTIAL else None
        # Partial uploads wait for their final upload; with processing off, received is ready.
        if upload.concat_role == ConcatRole.PARTIAL or self.processor is not None:
            state = UploadState.RECEIVED
        else:
            state = UploadState.READY
        fields = {
            **fields,
            "state": state,
            "completed_at": utcnow(),
            "expires_at": expires,
            "sha256": sha256,
            **self._write_ended(),
        }
        # What processing would find may be known already: recorded with the completion.
        processed = None
        if self.processor is not None and upload.concat_role != ConcatRole.PARTIAL and head is not None:
            processed = self.processor.processed_from_head(upload, head)
            fields.update(processed or {})
        await self._record(upload, generation, fields, retry=retry, report=True)
        if upload.concat_role != ConcatRole.PARTIAL:
            metrics.UPLOADS_FINISHED.labels(metrics.current_protocol.get()).inc()
        log.info("upload.received", upload_id=upload.id, length=length, state=upload.state)
        await self._publish(upload, "upload.received", state=str(state))
        if processed is not None:
            assert self.processor is not None
            try:
                await self.processor.announce_processed(upload)
            except DependencyUnavailable as exc:
                log.warning("events.publish_failed", upload_id=upload.id, error=exc.detail)
        elif upload.state == UploadState.READY:
            await self._publish(upload, "upload.ready")

    def _completed_now(self, upload: Upload, was_complete: bool) -> bool:
        """Whether this request completed the upload (or stored it whole, for the
        pre-finish hook to judge): ``_after_complete`` is due once its lock is released."""
        return upload.awaiting_finish is not None or (upload.is_complete and not was_complete)

    async def _after_complete(self, upload: Upload) -> None:
        """Runs after the completing transaction committed (or, with a pre-finish hook,
        after the bytes were stored whole), with no lock held."""
        pending = upload.awaiting_finish
        if pending is not None:
            upload.awaiting_finish = None
            if not await self._finish_after_hook(upload, pending):
                return
        if upload.concat_role == ConcatRole.PARTIAL:
            finals = await self.db.run(lambda s: repository.unfinished_finals(s, upload.owner))
            for final in finals:
                if upload.id in (final.concat_parts or []):
                    await self._try_finish_final(final)
            return
        if self.processor is not None and upload.state == UploadState.RECEIVED:
            try:
                await self.processor.submit(upload)
            except Exception as exc:
                # Recorded as received: the sweep hands it to processing again later.
                log.warning("processing.submit_failed", upload_id=upload.id, error=str(exc)[:300])

    async def _finish_after_hook(self, upload: Upload, pending: AwaitingFinish) -> bool:
        """Ask the pre-finish hook about an upload stored whole (no lock held, no
        transaction open), then record the completion held back for it. A rejection ends
        the upload ``failed`` without its bytes; False: another request finished or
        removed the upload meanwhile (``upload`` then shows what it did)."""
        assert self.hooks is not None
        length = pending.fields.get("length", upload.length)
        assert length is not None
        head = pending.head if pending.head is not None else await self._head_of(upload, length)
        asked = replace(
            upload, offset=length, length=length, sha256=pending.sha256, detected_type=sniff(head)
        )
        try:
            await self.hooks.ask("pre-finish", asked, upload.owner)
        except ProblemError as exc:
            if exc.code == "hook.rejected":
                await self._refuse_finished(upload, exc.detail or "refused")
            raise
        async with self._locked(upload.id) as holder:
            current = await self.db.run(lambda s: repository.get(s, upload.id))
            if current is None or current.is_gone:
                raise ProblemError("upload.not_found")  # removed while the hook thought
            if current.is_complete or current.offset != pending.offset:
                _mirror(upload, current)
                return False
            await self._record_completion(
                upload, holder.generation, pending.fields, pending.sha256, pending.head, retry=pending.retry
            )
        return True

    async def _refuse_finished(self, upload: Upload, message: str) -> None:
        """The pre-finish hook said no: the upload ends ``failed``, and its bytes go."""
        async with self._locked(upload.id):
            current = await self.db.run(lambda s: repository.get(s, upload.id))
            if current is None or current.is_complete or current.is_gone:
                return
            reason = f"hook.rejected: {message}"[:2000]
            if await self._fail_without_bytes(current, reason):
                log.info("upload.refused_at_finish", upload_id=upload.id, reason=reason)
            _mirror(upload, current)

    async def _fail_without_bytes(self, upload: Upload, reason: str, **fields: Any) -> bool:
        """End an unfinished upload (the caller holds it) ``failed`` with ``reason``,
        recorded with its webhook event, then remove its bytes and announce it. False:
        it had left the state it was read in."""

        def record(s: Any) -> bool:
            changed = repository.set_fields_if_state(
                s,
                upload,
                upload.state,
                state=UploadState.FAILED,
                failure_reason=reason[:2000],
                bytes_removed=True,
                expires_at=None,
                **fields,
            )
            if changed:
                self._report(s, upload)
            return changed

        if not await self.db.run(record):
            return False
        await self._discard_stored(upload.storage_key)
        await self._publish(upload, "upload.failed")
        return True

    async def _head_of(self, upload: Upload, length: int) -> bytes:
        """The first bytes of a stored upload, for sniffing (when they were not kept)."""
        stored = await self.store.find(upload.storage_key)
        head = bytearray()
        async for block in stored.reader(0, min(SNIFF_BYTES, length)):
            head += block
        return bytes(head)
