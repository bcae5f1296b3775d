"""Protocol-agnostic upload operations: create, append, terminate, concatenate, expire.

Protocol handlers parse and validate their headers, then call these methods; storage
backends know nothing of HTTP. The recorded offset only advances after the bytes are
in storage, and advances during a long write too (checkpoints).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from uploader.auth.principal import Principal
from uploader.db.engine import Database
from uploader.db.models import ConcatRole, Upload, UploadState, utcnow
from uploader.events.bus import EventBus, LocalEventBus
from uploader.hooks.http import HttpHooks
from uploader.kit.errors import DependencyUnavailable, ProblemError
from uploader.kit.logging import get_logger
from uploader.processing.base import Processor
from uploader.quotas.admission import Admission, Admitted, prune_token_uses
from uploader.quotas.rate import RateLimits
from uploader.settings import Settings
from uploader.storage.base import (
    AlreadyFinished,
    ConcatenatableUpload,
    LengthDeclarableUpload,
    RunningDigest,
    StorageFull,
    StorageUnavailable,
    StoredUpload,
    TerminatableUpload,
    UploadStore,
    WriteProgress,
)
from uploader.uploads import repository
from uploader.uploads.body import BodyTooLong, RequestBody
from uploader.uploads.locks import LeaseLost, LocalLocker, LockHolder, UploadLocked, UploadLocker
from uploader.uploads.metadata import declared_type_of, encode_value, filename_of

log = get_logger(__name__)

MAX_RUNNING_DIGESTS = 10_000
# How long a request retries the record that ends its write while the database is away
# (a failover, a restart) before it answers 503: the bytes are stored meanwhile.
RECORD_RETRY_SECONDS = 15.0
# How long HEAD waits for a writer it asked to stop to record what it received.
HEAD_SETTLE_SECONDS = 2.0
# After a lease, how long a part that a stale writer had already sent may take to land.
STALE_WRITE_MARGIN_SECONDS = 2.0
T = TypeVar("T")


@dataclass(frozen=True)
class Checksum:
    algorithm: str
    expected: bytes
    hasher: Any


def event_data(upload: Upload) -> dict[str, Any]:
    """What every event says about its upload (the status endpoint has the rest)."""
    return {
        "state": str(upload.state),
        "offset": upload.offset,
        "length": upload.length,
        "sha256": upload.sha256,
        "detected_type": upload.detected_type,
        "failure_reason": upload.failure_reason,
    }


@dataclass(frozen=True)
class ReceivedFile:
    """A file already written to storage and finished, not yet recorded."""

    storage_key: str
    length: int
    sha256: str
    meta: dict[str, str | None]
    upload_id: str | None = None  # the id the pre-create hook was told, if it was asked


def new_upload_id() -> str:
    return secrets.token_hex(16)


def new_storage_key() -> str:
    """Storage keys are generated, never built from anything a client sent."""
    return secrets.token_hex(16)


class UploadService:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        store: UploadStore,
        locker: UploadLocker,
        processor: Processor | None = None,
        events: EventBus | None = None,
        admission: Admission | None = None,
        hooks: HttpHooks | None = None,
    ) -> None:
        self.settings = settings
        self.admission = admission or Admission(settings, RateLimits(settings))
        self.hooks = hooks  # None: no hook configured, and nothing to pay
        self.events: EventBus = events or LocalEventBus()
        self.db = db
        self.store = store
        self.locker = locker
        self.processor = processor
        # SHA-256 of uploads being written in order on this process, keyed by upload id:
        # the common case gets its checksum without reading the file again.
        self._digests: OrderedDict[str, RunningDigest] = OrderedDict()
        # Uploads created here and not written yet: their first PATCH needs no SELECT. Only
        # sound while every writer of an upload is in this process (in-process locks).
        self._unwritten: OrderedDict[str, Upload] | None = (
            OrderedDict() if isinstance(locker, LocalLocker) else None
        )

    def _digest_at(self, upload_id: str, offset: int) -> RunningDigest | None:
        digest = self._digests.pop(upload_id, None)
        if offset == 0:
            return RunningDigest(head_bytes=self.processor.head_bytes if self.processor is not None else 0)
        return digest if digest is not None and digest.covered == offset else None

    def _digest_inline(self, upload: Upload) -> bool:
        # Hashing while receiving saves a second read but costs the receiving path CPU;
        # past a size the API is better off leaving it to processing. Where another
        # process's stale writer could still land bytes the storage does not refuse, the
        # digest of what this request sent may not be that of what is stored: processing
        # hashes the stored bytes instead.
        if self.locker.distributed and not self.store.excludes_writers:
            return False
        return upload.length is not None and upload.length <= self.settings.inline_digest_max_bytes

    def _keep_digest(self, upload_id: str, digest: RunningDigest) -> None:
        self._digests[upload_id] = digest
        while len(self._digests) > MAX_RUNNING_DIGESTS:
            self._digests.popitem(last=False)

    # -- reading ---------------------------------------------------------------

    async def get(self, owner: str | None, upload_id: str, *, allow_gone: bool = False) -> Upload:
        """The caller's upload; another principal's upload is indistinguishable from none.
        ``owner`` None: anyone's (an administrator)."""
        upload = await self.db.run(lambda s: repository.get(s, upload_id))
        if upload is None or (owner is not None and upload.owner != owner):
            raise ProblemError("upload.not_found")
        if not allow_gone:
            self._ensure_live(upload)
        return upload

    async def _for_writing(self, owner: str, upload_id: str, holder: LockHolder) -> Upload:
        """The upload for a request holding its lock (just created here: no SELECT). Where
        other processes may write too, the row is claimed for this holder's generation
        first, so that an older writer still running can record nothing more."""
        if self.locker.distributed:
            generation = holder.generation
            claimed = await self.db.run(lambda s: repository.claim_for_writing(s, upload_id, generation))
            if claimed is None or claimed[0].owner != owner:
                raise ProblemError("upload.not_found")
            upload, left_open = claimed
            self._ensure_live(upload)
            if upload.writer_generation > generation:
                raise _superseded()
            if left_open and not upload.is_complete and not self.store.excludes_writers:
                await self._outwait_stale_writer(upload)
            return upload
        fresh = self._unwritten.pop(upload_id, None) if self._unwritten is not None else None
        if fresh is None or fresh.owner != owner:
            return await self.get(owner, upload_id)
        self._ensure_live(fresh)
        return fresh

    async def get_settled(self, owner: str | None, upload_id: str) -> Upload:
        """The recorded upload, once a request writing to it was asked to stop and had a
        moment to record what it received (a client resuming after a lost connection).
        Takes no lock: a writer that does not let go (or died) delays this by seconds at
        most, and the recorded offset is the answer."""
        await self.locker.request_release(
            upload_id, min(HEAD_SETTLE_SECONDS, self.settings.lock_timeout_seconds)
        )
        return await self.get(owner, upload_id)

    async def _outwait_stale_writer(self, upload: Upload) -> None:
        """The previous writer's write never ended (it lost its lock, or died) and storage
        cannot refuse it: wait until it can no longer land anything. It sends nothing once
        its lease could have run out, and cancels the parts it has in flight, so a lease
        plus a margin for a part already sent covers it."""
        wait = self.settings.lock_lease_seconds + STALE_WRITE_MARGIN_SECONDS
        log.warning("upload.takeover_wait", upload_id=upload.id, seconds=wait)
        await asyncio.sleep(wait)

    def _ensure_live(self, upload: Upload) -> None:
        if upload.state == UploadState.TERMINATED:
            raise ProblemError("upload.not_found")
        if upload.state == UploadState.EXPIRED or self._is_past_expiry(upload):
            raise ProblemError("upload.expired")

    @staticmethod
    def _is_past_expiry(upload: Upload) -> bool:
        return upload.expires_at is not None and upload.expires_at <= utcnow()

    async def list_page(self, owner: str | None, before_seq: int | None, limit: int) -> list[Upload]:
        return await self.db.run(lambda s: repository.page_for_owner(s, owner, before_seq, limit))

    def _expiry_from_now(self) -> datetime:
        return utcnow() + timedelta(seconds=self.settings.upload_ttl_seconds)

    # -- creating --------------------------------------------------------------

    def size_limit(self, upload: Upload) -> int:
        """The most bytes this upload may have: the server's maximum, or its token's."""
        limit = self.settings.max_upload_size
        return min(limit, upload.size_limit) if upload.size_limit is not None else limit

    async def create(
        self,
        principal: Principal,
        length: int | None,
        meta: dict[str, str | None],
        concat_role: ConcatRole = ConcatRole.NONE,
        concat_parts: list[str] | None = None,
        *,
        admitted: Admitted | None = None,
    ) -> Upload:
        """A new upload of ``principal``'s, within its limits (``admitted``: already
        checked by the caller)."""
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
            state=UploadState.CREATED,
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
        )
        if concat_role != ConcatRole.PARTIAL:  # a part is a piece of a file: its final is asked
            await self.before_create(upload)
        await self._storage(self.store.create(upload.storage_key, length))
        try:
            await self.db.run(
                partial(self._insert_admitted, principal=principal, admitted=admitted, new=[upload])
            )
        except ProblemError:
            await self._discard_stored(upload.storage_key)
            raise
        if self._unwritten is not None and concat_role != ConcatRole.FINAL and length != 0:
            self._unwritten[upload_id] = upload
            while len(self._unwritten) > MAX_RUNNING_DIGESTS:
                self._unwritten.popitem(last=False)
        log.debug("upload.created", upload_id=upload_id, length=length, concat=concat_role)
        await self._publish(upload, "upload.created")
        if length == 0:
            await self._complete(upload, await self.store.find(upload.storage_key), upload.writer_generation)
            await self._after_complete(upload)
        return upload

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
        if admitted.counted:  # after the insert: its usage row now holds them, and is held
            self.admission.reserve(
                connection, principal, [upload.length for upload in new], files=admitted.files
            )

    async def _discard_stored(self, storage_key: str) -> None:
        """Bytes stored for an upload that was then refused (over quota, say)."""
        with contextlib.suppress(Exception):
            stored = await self.store.find(storage_key)
            if isinstance(stored, TerminatableUpload):
                await stored.terminate()

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
            )
            for file in files
        ]
        await self.db.run(partial(self._insert_admitted, principal=principal, admitted=admitted, new=uploads))
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

    async def _try_finish_final(self, final: Upload) -> None:
        """Concatenate once every part is complete (concatenation-unfinished waits).

        The parts are held while they are copied, so a part cannot be removed half-way
        (its DELETE waits); a final whose parts went, or add up to more than the maximum
        size, or whose copy failed, ends ``failed`` with its reason and no bytes."""
        async with contextlib.AsyncExitStack() as held:
            holder = await held.enter_async_context(self._locked(final.id))
            current = await self.db.run(lambda s: repository.get(s, final.id))
            if current is None or current.state != UploadState.CREATED:
                return
            part_ids = current.concat_parts or []
            parts_by_id = {u.id: u for u in await self.db.run(lambda s: repository.get_many(s, part_ids))}
            if any(pid not in parts_by_id or parts_by_id[pid].is_gone for pid in part_ids):
                await self._fail_final(current, "a partial upload was removed before concatenation")
                return
            if not all(parts_by_id[pid].is_complete for pid in part_ids):
                return  # an unfinished part: its completion comes back here
            for part_id in sorted(set(part_ids)):  # one order for every taker: no deadlock
                await held.enter_async_context(self._locked(part_id, interrupt=False))
            parts_by_id = {u.id: u for u in await self.db.run(lambda s: repository.get_many(s, part_ids))}
            parts = [parts_by_id.get(pid) for pid in part_ids]
            ready = [p for p in parts if p is not None and p.is_complete]
            if len(ready) != len(parts):
                await self._fail_final(current, "a partial upload was removed before concatenation")
                return
            lengths = [p.offset for p in ready]
            if sum(lengths) > self.settings.max_upload_size:
                limit = self.settings.max_upload_size
                await self._fail_final(
                    current, f"upload.too_large: the parts add up to {sum(lengths)} bytes, over {limit}"
                )
                return
            target = await self.store.find(current.storage_key)
            if not isinstance(target, ConcatenatableUpload):
                raise ProblemError("tus.concat_invalid", "storage cannot concatenate")
            sources = [await self.store.find(p.storage_key) for p in ready]
            try:
                await self._storage(target.concatenate(sources, lengths))
            except ProblemError as exc:
                await self._fail_final(current, f"{exc.code}: {exc.detail}", target)
                raise
            await self._complete(current, target, holder.generation, length=sum(lengths), offset=sum(lengths))
        await self._after_complete(current)

    async def _fail_final(self, final: Upload, reason: str, stored: StoredUpload | None = None) -> None:
        log.warning("upload.concat_failed", upload_id=final.id, reason=reason)
        if stored is None:
            stored = await self.store.find(final.storage_key)
        if isinstance(stored, TerminatableUpload):
            with contextlib.suppress(Exception):  # what was copied is not kept
                await stored.terminate()
        await self.db.run(
            lambda s: repository.set_fields(
                s, final, state=UploadState.FAILED, failure_reason=reason, expires_at=None
            )
        )
        await self._publish(final, "upload.failed")

    # -- writing ---------------------------------------------------------------

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
                    try:
                        await self._write(upload, offset, body, checksum, holder)
                    finally:
                        body.stop_watching()
            finally:
                await self._end_claim(upload, holder.generation)
        if upload.is_complete and not was_complete:
            await self._after_complete(upload)
        if body.idle:
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

    async def _record(
        self, upload: Upload, generation: int, fields: dict[str, Any], *, retry: bool = False
    ) -> None:
        """Record what a writer holding ``generation`` stored (retried for a while while
        the database is away, with ``retry``). Refused, because a newer writer took over or
        the upload was removed: ``upload.locked``."""
        work = partial(_record_write, upload=upload, generation=generation, fields=fields)
        if not await (self._retrying(work) if retry else self.db.run(work)):
            raise _superseded()

    async def _retrying(self, work: Callable[[Any], T]) -> T:
        """``db.run(work)``, tried again while the database is away, for a while."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RECORD_RETRY_SECONDS
        delay = 0.1
        while True:
            try:
                return await self.db.run(work)
            except DependencyUnavailable as exc:
                if loop.time() + delay > deadline:
                    raise
                log.warning("upload.record_retry", error=exc.detail, retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _write_ended(self) -> dict[str, Any]:
        """The field that says a claimed write ended (only claims, with locks across
        processes, open one)."""
        return {"writer_active": False} if self.locker.distributed else {}

    async def _rollback(self, upload: Upload, stored: StoredUpload, offset: int, generation: int) -> None:
        await stored.discard_from(offset)
        if upload.offset != offset:
            await self._record(upload, generation, {"offset": offset, **self._write_ended()})

    async def _end_claim(self, upload: Upload | None, generation: int) -> None:
        """A claimed write that ended without a record saying so (refused, failed, had
        nothing to write): say so now, or the next writer would wait for a stale one."""
        if upload is None or not upload.writer_active:
            return
        with contextlib.suppress(Exception):  # left open, it costs the next writer a wait
            await self.db.run(lambda s: repository.record_write(s, upload, generation, writer_active=False))

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
        if upload.is_complete and not was_complete:
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

    async def _complete(
        self, upload: Upload, stored: StoredUpload, generation: int, *, retry: bool = False, **fields: Any
    ) -> None:
        """Finish the stored object, then record the upload as received (with ``fields``)."""
        length = fields.get("length", upload.length)
        assert length is not None
        await self._storage(stored.finish(length))
        # Partial uploads exist to be concatenated: they expire like unfinished ones.
        expires = self._expiry_from_now() if upload.concat_role == ConcatRole.PARTIAL else None
        digest = self._digests.pop(upload.id, None)
        if length == 0:
            digest = RunningDigest()
        whole = digest is not None and digest.covered == length
        sha256 = digest.hexdigest() if digest is not None and whole else None
        # Partial uploads wait for their final upload; with processing off, received is ready.
        if upload.concat_role == ConcatRole.PARTIAL or self.processor is not None:
            state = UploadState.RECEIVED
        else:
            state = UploadState.READY
        fields.update(
            state=state, completed_at=utcnow(), expires_at=expires, sha256=sha256, **self._write_ended()
        )
        # What processing would find may be known already: recorded with the completion.
        processed = None
        if self.processor is not None and upload.concat_role != ConcatRole.PARTIAL and sha256 is not None:
            assert digest is not None
            processed = self.processor.processed_from_head(upload, digest.head)
            fields.update(processed or {})
        await self._record(upload, generation, fields, retry=retry)
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

    async def _after_complete(self, upload: Upload) -> None:
        """Runs after the completing transaction committed."""
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

    # -- removing --------------------------------------------------------------

    async def terminate(
        self, owner: str | None, upload_id: str, *, may_delete_finished: bool = True, ask_hook: bool = True
    ) -> None:
        """Remove an upload and its bytes. ``may_delete_finished``: whether the caller may
        remove one that is complete (the ``delete`` scope); any caller with ``upload``
        may abandon its unfinished uploads. The pre-terminate hook is asked first, with no
        lock held (``ask_hook`` False: a cleanup of the service's own, not a request)."""
        if ask_hook and self.hooks is not None and self.hooks.wants("pre-terminate"):
            upload = await self.get(owner, upload_id, allow_gone=True)
            if upload.state == UploadState.TERMINATED:
                raise ProblemError("upload.not_found")
            await self.hooks.ask("pre-terminate", upload, owner or upload.owner)
        async with self._locked(upload_id):
            upload = await self.get(owner, upload_id, allow_gone=True)
            if upload.state == UploadState.TERMINATED:
                raise ProblemError("upload.not_found")
            if upload.is_complete and not may_delete_finished:
                raise ProblemError("auth.forbidden", "deleting a finished upload needs the 'delete' scope")
            await self._remove(upload, UploadState.TERMINATED)

    async def _remove(self, upload: Upload, state: UploadState) -> None:
        """Record the upload gone, then remove its bytes. In this order, whatever still
        works on it (a pipeline rendering variants, a writer that lost its lock) fails its
        next conditional record and cleans up after itself; a pipeline that finished
        between a removal of the bytes and the record would leave variants behind."""
        if self._unwritten is not None:
            self._unwritten.pop(upload.id, None)

        def record(s: Any) -> None:
            repository.set_fields(s, upload, state=state, expires_at=None)

        try:
            await self.db.run(record)
            recorded = True
        except StorageFull:
            recorded = False  # a database on a full disk: the bytes go first, to make room
        stored = await self.store.find(upload.storage_key)
        if isinstance(stored, TerminatableUpload):
            await self._storage(stored.terminate())
        if not recorded:
            await self._storage(self.db.run(record))
        log.info(f"upload.{state.value}", upload_id=upload.id)
        await self._publish(upload, f"upload.{state.value}")

    async def expire_due(self, batch: int = 100) -> int:
        """Remove uploads whose expiry passed; returns how many were removed. An upload
        that a request holds is being written: it is left alone (its writer pushes the
        expiry forward), and never interrupted."""
        due = await self.db.run(lambda s: repository.due_for_expiry(s, utcnow(), batch))
        removed = 0
        for candidate in due:
            try:
                async with self.locker.hold(candidate.id, interrupt=False, patience=0):
                    upload = await self.db.run(partial(repository.get, upload_id=candidate.id))
                    if upload is None or upload.is_gone or not self._is_past_expiry(upload):
                        continue
                    await self._remove(upload, UploadState.EXPIRED)
                    removed += 1
            except (UploadLocked, ProblemError):
                continue  # busy: the next sweep looks again
        return removed

    async def prune_tombstones(self, batch: int = 500) -> int:
        """Delete the rows (and event history) of uploads terminated or expired longer
        than the tombstone retention ago; returns how many."""
        before = utcnow() - timedelta(seconds=self.settings.tombstone_retention_seconds)
        pruned = 0
        while True:
            gone = await self.db.run(lambda s: repository.prune_tombstones(s, before, batch))
            for upload_id, owner in gone:
                with contextlib.suppress(DependencyUnavailable):
                    await self.events.forget(owner, upload_id)
            pruned += len(gone)
            if len(gone) < batch:
                break
        # A token's file count outlives the token by its leeway, then goes.
        expired_before = utcnow() - timedelta(seconds=self.settings.jwt_leeway_seconds + 60)
        await self.db.run(lambda s: prune_token_uses(s, expired_before))
        return pruned

    # -- helpers ---------------------------------------------------------------

    async def _publish(self, upload: Upload, event_type: str, **overrides: Any) -> None:
        """Publish an event about a change already recorded. A bus that is away loses the
        event, not the change: the request that made it still succeeds (the status
        endpoint has the truth, and SSE clients catch up from it)."""
        if upload.concat_role == ConcatRole.PARTIAL:
            return  # parts are an implementation detail of their final upload
        try:
            await self.events.publish(
                upload.owner, upload.id, event_type, {**event_data(upload), **overrides}
            )
        except DependencyUnavailable as exc:
            log.warning("events.publish_failed", upload_id=upload.id, type=event_type, error=exc.detail)

    def _locked(self, upload_id: str, *, interrupt: bool = True) -> Any:
        return _translate_locked(self.locker.hold(upload_id, interrupt=interrupt))

    @staticmethod
    async def _storage(operation: Awaitable[Any]) -> Any:
        try:
            return await operation
        except StorageFull as exc:
            raise ProblemError("storage.full", str(exc)) from exc
        except StorageUnavailable as exc:
            raise ProblemError("storage.unavailable", str(exc)) from exc


class _translate_locked:
    """Turns a lock timeout into the ``upload.locked`` problem."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __aenter__(self) -> Any:
        try:
            return await self.inner.__aenter__()
        except UploadLocked:
            raise ProblemError("upload.locked") from None

    async def __aexit__(self, *exc: Any) -> Any:
        return await self.inner.__aexit__(*exc)


def _record_write(connection: Any, *, upload: Upload, generation: int, fields: dict[str, Any]) -> bool:
    return repository.record_write(connection, upload, generation, **fields)


def _superseded() -> ProblemError:
    return ProblemError("upload.locked", "another request took over this upload; HEAD tells its offset")
