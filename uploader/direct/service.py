"""Direct uploads: records, ownership and completion of files a client sends to S3 itself.

Each such file is an upload like any other from its creation on: a row in state
``receiving`` with protocol ``s3-direct``, the ``upload.created`` event, progress as its
parts are signed and listed. It completes once S3 holds its object: through the
multipart complete call, an S3 event notification, or a HEAD of the pending keys (on a
schedule, and whenever its status or events are read). Completion checks the object's
real size first; over the allowed size it is deleted and the upload fails. From
``received`` on, processing, events, downloads and webhooks are those of a tus upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from uploader.auth.principal import Principal
from uploader.db.models import Upload, UploadState, utcnow
from uploader.kit.errors import DependencyUnavailable, ProblemError
from uploader.kit.logging import get_logger
from uploader.observability.metrics import counted_as
from uploader.quotas.admission import usage_of
from uploader.storage.base import StorageUnavailable
from uploader.uploads import repository
from uploader.uploads.core import DIRECT_PROTOCOL
from uploader.uploads.locks import UploadLocked
from uploader.uploads.metadata import encode_value
from uploader.uploads.service import UploadService

if TYPE_CHECKING:  # S3's client is imported only where S3 is used
    from uploader.storage.s3_direct import DirectS3

log = get_logger(__name__)

MAX_METADATA_PAIRS = 64
MAX_PARTS = 10_000
PENDING_BATCH = 500
PROGRESS_INTERVAL_SECONDS = 2.0
ACTIVE_SECONDS = 3 * PROGRESS_INTERVAL_SECONDS
MAX_TRACKED = 10_000


class _StoredWhole:
    """The stored object of a direct upload: S3 finished it already."""

    async def finish(self, length: int) -> None:
        return None


class DirectUploads:
    def __init__(self, service: UploadService, s3: DirectS3 | None) -> None:
        self.service = service
        self.s3 = s3
        # When this process last listed an upload's parts for its progress.
        self._listed_at: OrderedDict[str, float] = OrderedDict()
        # (key, multipart id) -> (upload id, owner, storage key), once checked here.
        self._checked: OrderedDict[tuple[str, str], tuple[str, str, str]] = OrderedDict()

    @property
    def _s3(self) -> DirectS3:
        if self.s3 is None:
            raise ProblemError(
                "direct.needs_s3", "this server stores uploads in a local folder; direct uploads need S3"
            )
        return self.s3

    # -- creation -----------------------------------------------------------------------

    async def _create(
        self,
        principal: Principal,
        filename: str | None,
        content_type: str | None,
        metadata: dict[str, str],
        begin: Any,
    ) -> Upload:
        if len(metadata) > MAX_METADATA_PAIRS:
            raise ProblemError("request.invalid", f"at most {MAX_METADATA_PAIRS} metadata fields")
        pairs = {str(k)[:200]: str(v) for k, v in metadata.items()}
        if filename:
            pairs["filename"] = filename
        if content_type:
            pairs["filetype"] = content_type
        meta: dict[str, str | None] = {key: encode_value(value) for key, value in pairs.items()}
        with counted_as(DIRECT_PROTOCOL):
            return await self.service.create(principal, None, meta, state=UploadState.RECEIVING, begin=begin)

    async def start_single(
        self, principal: Principal, filename: str | None, content_type: str | None, metadata: dict[str, str]
    ) -> tuple[Upload, str, dict[str, str]]:
        """A new upload sent in one POST to S3: its record, and the POST's URL and fields."""
        s3 = self._s3
        media_type = content_type or "application/octet-stream"
        signed: dict[str, Any] = {}

        async def begin(draft: Upload) -> None:
            await self._limit_to_quota(principal, draft)
            limit = self.service.size_limit(draft)
            signed["url"], signed["fields"] = await s3.post_form(draft.storage_key, limit, media_type)

        upload = await self._create(principal, filename, content_type, metadata, begin)
        return upload, signed["url"], signed["fields"]

    async def start_multipart(
        self, principal: Principal, filename: str | None, content_type: str | None, metadata: dict[str, str]
    ) -> tuple[Upload, str]:
        """A new upload sent in parts to S3: its record and the multipart upload's id."""
        s3 = self._s3
        started: dict[str, str] = {}

        async def begin(draft: Upload) -> None:
            await self._limit_to_quota(principal, draft)
            media_type = content_type or "application/octet-stream"
            started["id"] = await s3.begin_multipart(draft.storage_key, media_type)

        upload = await self._create(principal, filename, content_type, metadata, begin)
        return upload, started["id"]

    async def _limit_to_quota(self, principal: Principal, draft: Upload) -> None:
        """A direct upload's size is known only once S3 holds it: what the principal's
        quota still has room for becomes its size limit, in the signed policy and at
        completion, beside the token's and the server's. (Uploads begun at once share
        that room without knowing of each other.)"""
        quota_bytes, _ = self.service.admission.quota_of(principal)
        if quota_bytes is None:
            return
        held = await self.service.db.run(lambda c: usage_of(c, principal.name))
        room = max(0, quota_bytes - held.bytes)
        draft.size_limit = room if draft.size_limit is None else min(draft.size_limit, room)

    # -- the caller's own uploads ---------------------------------------------------------

    async def owned(self, principal: Principal, key: str, multipart_id: str | None = None) -> Upload:
        """The caller's direct upload at object ``key`` (and with that multipart upload);
        anyone else's, or none, is not found."""
        s3 = self._s3
        storage_key = s3.storage_key_of(key)
        upload = (
            await self.service.db.run(lambda s: repository.by_storage_key(s, storage_key))
            if storage_key is not None
            else None
        )
        owner = principal.owner_filter
        if (
            upload is None
            or upload.protocol != DIRECT_PROTOCOL
            or (owner is not None and upload.owner != owner)
            or upload.state == UploadState.TERMINATED
        ):
            raise ProblemError("upload.not_found")
        if (
            multipart_id is not None
            and upload.state == UploadState.RECEIVING
            and await s3.multipart_id(upload.storage_key) != multipart_id
        ):
            raise ProblemError("upload.not_found")
        return upload

    def _receiving(self, upload: Upload) -> None:
        self.service._ensure_live(upload)
        if upload.state != UploadState.RECEIVING:
            raise ProblemError("upload.not_found", "this upload is not receiving parts any more")

    # -- parts ----------------------------------------------------------------------------

    async def sign_part(self, principal: Principal, key: str, multipart_id: str, number: int) -> str:
        if not 1 <= number <= MAX_PARTS:
            raise ProblemError("request.invalid", f"part numbers run from 1 to {MAX_PARTS}")
        s3 = self._s3
        # The parts before it are stored: that much has arrived. Listed at most every
        # PROGRESS_INTERVAL_SECONDS an upload: a listing per part would cost more than the
        # signing. Between listings, an upload whose owner and multipart id this process
        # has checked is signed for without reading its row: a part URL of an upload that
        # was removed or completed meanwhile names a multipart upload S3 no longer has.
        now = time.monotonic()
        checked = self._checked.get((key, multipart_id))
        if (
            checked is not None
            and principal.owner_filter in (None, checked[1])
            and now - self._listed_at.get(checked[0], 0.0) < PROGRESS_INTERVAL_SECONDS
        ):
            return await s3.part_url(checked[2], multipart_id, number)
        upload = await self.owned(principal, key, multipart_id)
        self._receiving(upload)
        self._remember(self._checked, (key, multipart_id), (upload.id, upload.owner, upload.storage_key))
        if number > 1 and now - self._listed_at.get(upload.id, 0.0) >= PROGRESS_INTERVAL_SECONDS:
            self._remember(self._listed_at, upload.id, now)
            await self._progress(upload, await s3.parts(upload.storage_key, multipart_id))
        return await s3.part_url(upload.storage_key, multipart_id, number)

    @staticmethod
    def _remember(table: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > MAX_TRACKED:
            table.popitem(last=False)

    async def list_parts(self, principal: Principal, key: str, multipart_id: str) -> list[dict[str, Any]]:
        upload = await self.owned(principal, key, multipart_id)
        self._receiving(upload)
        parts = await self._s3.parts(upload.storage_key, multipart_id)
        await self._progress(upload, parts)
        return parts

    async def _progress(self, upload: Upload, parts: list[dict[str, Any]]) -> None:
        """Record and announce how much of the upload S3 holds, when it grew."""
        offset = sum(int(part["Size"]) for part in parts)
        if offset <= upload.offset:
            return
        fields = {"offset": offset, "expires_at": self.service._expiry_from_now()}
        if await self.service.db.run(
            lambda s: repository.set_fields_if_state(s, upload, UploadState.RECEIVING, **fields)
        ):
            await self.service._publish(upload, "upload.progress")

    # -- completion -------------------------------------------------------------------------

    async def complete(
        self, principal: Principal, key: str, multipart_id: str, parts: list[dict[str, Any]]
    ) -> Upload:
        upload = await self.owned(principal, key, multipart_id)
        self._receiving(upload)
        if not parts or len(parts) > MAX_PARTS:
            raise ProblemError("direct.parts_invalid", "name between 1 and 10,000 parts")
        try:
            await self._s3.complete(upload.storage_key, multipart_id, parts)
        except StorageUnavailable as exc:
            cause = exc.__cause__
            code = getattr(cause, "response", {}).get("Error", {}).get("Code", "")
            if code in ("InvalidPart", "InvalidPartOrder", "EntityTooSmall", "MalformedXML"):
                raise ProblemError("direct.parts_invalid", f"S3 refused the parts: {code}") from exc
            raise
        return await self.settle(upload, patience=None)

    async def settle(self, upload: Upload, *, patience: float | None = 0) -> Upload:
        """Complete a receiving direct upload whose object S3 now holds (nothing while it
        holds none); returns the upload as it then is. ``patience``: how long to wait for
        another request holding the upload (0: leave it to that one)."""
        if upload.state != UploadState.RECEIVING or upload.protocol != DIRECT_PROTOCOL:
            return upload
        service = self.service
        size = await self._s3.size(upload.storage_key)
        if size is None:
            return upload
        with counted_as(DIRECT_PROTOCOL), _locked_problem(patience):
            async with service.locker.hold(upload.id, interrupt=False, patience=patience) as holder:
                current = await service.db.run(lambda s: repository.get(s, upload.id))
                if current is None or current.state != UploadState.RECEIVING:
                    return current or upload
                limit = service.size_limit(current)
                if size > limit:
                    await self._refuse_oversized(current, size, limit)
                    return current
                await service._complete(current, _StoredWhole(), holder.generation, offset=size, length=size)  # type: ignore[arg-type]
            if service._completed_now(current, was_complete=False):
                await service._after_complete(current)
        log.info("direct.completed", upload_id=current.id, length=size, state=current.state)
        return current

    async def _refuse_oversized(self, upload: Upload, size: int, limit: int) -> None:
        reason = f"upload.too_large: S3 holds {size} bytes, {limit} are allowed"
        if await self.service._fail_without_bytes(upload, reason, completed_at=utcnow()):
            log.info("direct.refused_oversized", upload_id=upload.id, size=size, limit=limit)

    async def abort(self, principal: Principal, key: str, multipart_id: str) -> None:
        upload = await self.owned(principal, key, multipart_id)
        await self._s3.abort(upload.storage_key, multipart_id)
        with contextlib.suppress(ProblemError):  # removed meanwhile: nothing left to do
            await self.service.terminate(upload.owner, upload.id, may_delete_finished=False)

    # -- finding objects that landed --------------------------------------------------------

    async def settle_pending(self) -> int:
        """HEAD the objects of every receiving direct upload, and complete those S3 holds;
        returns how many completed."""
        if self.s3 is None:
            return 0
        # An upload whose parts are being signed records progress now and then: while it
        # does, it is still being sent (its complete call says when it is done), and is
        # left out. One sent in a single request never records any.
        quiet_since = utcnow() - timedelta(seconds=ACTIVE_SECONDS)
        pending = await self.service.db.run(
            lambda s: repository.awaiting_object(s, DIRECT_PROTOCOL, quiet_since, PENDING_BATCH)
        )
        settled = 0
        for upload in pending:
            try:
                if (await self.settle(upload)).state != UploadState.RECEIVING:
                    settled += 1
            except (UploadLocked, ProblemError, StorageUnavailable, DependencyUnavailable) as exc:
                log.debug("direct.settle_skipped", upload_id=upload.id, error=str(exc)[:200])
        return settled

    async def settle_on_read(self, upload: Upload) -> Upload:
        """A direct upload whose status or events are read: completed first when S3 holds
        its object (a reader never waits for another request, nor fails for S3)."""
        if self.s3 is None or upload.protocol != DIRECT_PROTOCOL or upload.state != UploadState.RECEIVING:
            return upload
        try:
            return await self.settle(upload)
        except (UploadLocked, StorageUnavailable, DependencyUnavailable) as exc:
            log.debug("direct.settle_skipped", upload_id=upload.id, error=str(exc)[:200])
            return upload

    async def settle_object(self, object_key: str) -> Upload | None:
        """An S3 event notification said ``object_key`` was stored."""
        if self.s3 is None:
            return None
        storage_key = self.s3.storage_key_of(object_key)
        if storage_key is None:
            return None
        upload = await self.service.db.run(lambda s: repository.by_storage_key(s, storage_key))
        if upload is None:
            return None
        return await self.settle(upload, patience=None)


@contextlib.contextmanager
def _locked_problem(patience: float | None) -> Iterator[None]:
    """A request that waited for the upload and timed out: ``upload.locked``; a sweep
    that would not wait lets UploadLocked through, to skip the upload."""
    try:
        yield
    except UploadLocked:
        if patience is None:
            raise ProblemError("upload.locked") from None
        raise


async def settle_pending_loop(direct: DirectUploads, interval: float) -> None:
    """Until cancelled: complete the direct uploads whose objects landed, every ``interval``."""
    while True:
        await asyncio.sleep(interval)
        try:
            await direct.settle_pending()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a dependency away: the next round tries again
            log.warning("direct.settle_failed", error=str(exc)[:300])
