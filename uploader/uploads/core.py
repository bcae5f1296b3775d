"""What every part of the upload service shares: its parts (settings, database, store,
locks, processor, events, admission, hooks), reading uploads, recording writes, and
publishing what changed. ``UploadService`` (service.py) is this with its operations:
completion.py, concatenation.py and removal.py each add one concern."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from uploader.db.engine import Database
from uploader.db.models import ConcatRole, Upload, UploadState, utcnow
from uploader.events.bus import EventBus, LocalEventBus
from uploader.hooks.http import HttpHooks
from uploader.kit.errors import DependencyUnavailable, ProblemError
from uploader.kit.logging import get_logger
from uploader.processing.base import Processor
from uploader.quotas.admission import Admission
from uploader.quotas.rate import RateLimits
from uploader.settings import Settings
from uploader.storage.base import (
    RunningDigest,
    StorageFull,
    StorageUnavailable,
    TerminatableUpload,
    UploadStore,
)
from uploader.uploads import repository
from uploader.uploads.locks import LocalLocker, LockHolder, UploadLocked, UploadLocker
from uploader.webhooks import outbox

log = get_logger(__name__)

MAX_RUNNING_DIGESTS = 10_000
# How long a request retries the record that ends its write while the database is away
# (a failover, a restart) before it answers 503: the bytes are stored meanwhile.
RECORD_RETRY_SECONDS = 15.0
# How long HEAD waits for a writer it asked to stop to record what it received.
HEAD_SETTLE_SECONDS = 2.0
# After a lease, how long a part that a stale writer had already sent may take to land.
STALE_WRITE_MARGIN_SECONDS = 2.0
# The protocol of uploads whose bytes the client sends to S3 itself (uploader/direct/).
DIRECT_PROTOCOL = "s3-direct"
T = TypeVar("T")


@dataclass(frozen=True)
class Checksum:
    algorithm: str
    expected: bytes
    hasher: Any


# The states whose reaching is a webhook event (``_report``).
_REPORTED_STATES = frozenset({UploadState.RECEIVED, UploadState.READY, UploadState.FAILED})


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


@dataclass(frozen=True)
class AwaitingFinish:
    """A completion held back for the pre-finish hook: the bytes are stored whole and
    the object finished; what would be recorded, and the offset the row still has."""

    fields: dict[str, Any]
    sha256: str | None
    head: bytes | None
    offset: int
    retry: bool


def new_upload_id() -> str:
    return secrets.token_hex(16)


def new_storage_key() -> str:
    """Storage keys are generated, never built from anything a client sent."""
    return secrets.token_hex(16)


class ServiceCore:
    """The shared state and helpers of the upload service."""

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

    async def get(self, owner: str | None, upload_id: str, *, allow_gone: bool = False) -> Upload:
        """The caller's upload; another principal's upload is indistinguishable from none.
        ``owner`` None: anyone's (an administrator)."""
        upload = await self.db.run(lambda s: repository.get(s, upload_id), transaction=False)
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
            # One statement on PostgreSQL (elsewhere a read, then an update guarded by the
            # generation: each stands alone).
            claimed = await self.db.run(
                lambda s: repository.claim_for_writing(s, upload_id, generation), transaction=False
            )
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

    def size_limit(self, upload: Upload) -> int:
        """The most bytes this upload may have: the server's maximum, or its token's."""
        limit = self.settings.max_upload_size
        return min(limit, upload.size_limit) if upload.size_limit is not None else limit

    async def _discard_stored(self, storage_key: str) -> None:
        """Bytes stored for an upload that was then refused (over quota, say)."""
        with contextlib.suppress(Exception):
            stored = await self.store.find(storage_key)
            if isinstance(stored, TerminatableUpload):
                await stored.terminate()

    async def _record(
        self,
        upload: Upload,
        generation: int,
        fields: dict[str, Any],
        *,
        retry: bool = False,
        report: bool = False,
    ) -> None:
        """Record what a writer holding ``generation`` stored (retried for a while while
        the database is away, with ``retry``; with ``report``, the completion's webhook
        events go in the same transaction). Refused, because a newer writer took over or
        the upload was removed: ``upload.locked``."""

        def work(connection: Any) -> bool:
            if not repository.record_write(connection, upload, generation, **fields):
                return False
            if report:
                self._report(connection, upload)
            return True

        # One statement, unless the completion's webhook events go into the outbox with it.
        transaction = bool(report and self.settings.webhook_url)
        if not await (
            self._retrying(work, transaction) if retry else self.db.run(work, transaction=transaction)
        ):
            raise _superseded()

    async def _retrying(self, work: Callable[[Any], T], transaction: bool = True) -> T:
        """``db.run(work)``, tried again while the database is away, for a while."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RECORD_RETRY_SECONDS
        delay = 0.1
        while True:
            try:
                return await self.db.run(work, transaction=transaction)
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

    async def _end_claim(self, upload: Upload | None, generation: int) -> None:
        """A claimed write that ended without a record saying so (refused, failed, had
        nothing to write): say so now, or the next writer would wait for a stale one."""
        if upload is None or not upload.writer_active:
            return
        with contextlib.suppress(Exception):  # left open, it costs the next writer a wait
            await self.db.run(
                lambda s: repository.record_write(s, upload, generation, writer_active=False),
                transaction=False,
            )

    def _report(self, connection: Any, upload: Upload) -> None:
        """The webhook events of a completion (``upload.received``, and ``upload.ready``
        when it is ready at once) or a failure, into the outbox, in the transaction that
        records it. Nothing without webhooks."""
        if not self.settings.webhook_url or upload.state not in _REPORTED_STATES:
            return  # (a creation, a PATCH that did not complete: nothing to report)
        data = event_data(upload)
        events = []
        if upload.state in (UploadState.RECEIVED, UploadState.READY):
            events.append(("upload.received", {**data, "state": str(UploadState.RECEIVED)}))
        if upload.state in (UploadState.READY, UploadState.FAILED):
            events.append((f"upload.{upload.state}", data))
        outbox.record(connection, upload, events)

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

    async def _try_finish_final(self, final: Upload) -> None:
        """Concatenate a final upload whose parts may all be complete (concatenation.py)."""
        raise NotImplementedError


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


_MIRRORED = ("state", "offset", "length", "sha256", "completed_at", "failure_reason", "bytes_removed")


def _mirror(upload: Upload, current: Upload | None) -> None:
    """Show on ``upload`` (a request's copy) what the row now says."""
    if current is not None:
        for name in (
            "state",
            "offset",
            "length",
            "sha256",
            "completed_at",
            "failure_reason",
            "bytes_removed",
        ):
            setattr(upload, name, getattr(current, name))


def _superseded() -> ProblemError:
    return ProblemError("upload.locked", "another request took over this upload; HEAD tells its offset")
