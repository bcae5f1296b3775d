"""Removing uploads: on request (terminate), past their expiry, and their tombstones."""

from __future__ import annotations

import contextlib
import time
from datetime import timedelta
from functools import partial
from typing import Any

from uploader.db.models import Upload, UploadState, utcnow
from uploader.kit.errors import DependencyUnavailable, ProblemError
from uploader.kit.logging import get_logger
from uploader.observability import metrics
from uploader.quotas.admission import prune_token_uses
from uploader.storage.base import (
    StorageFull,
    TerminatableUpload,
)
from uploader.uploads import repository
from uploader.uploads.core import ServiceCore
from uploader.uploads.locks import UploadLocked

log = get_logger(__name__)


class Removal(ServiceCore):
    """Termination, expiry and pruning."""

    _orphans_swept_at = 0.0  # when this process last swept storage for orphans

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

        def record(s: Any) -> bool:
            """Gone; and whether another upload still uses the bytes (deduplication: the
            same transaction, so a link to this upload either committed first and is
            seen, or waits and finds this one gone)."""
            repository.set_fields(s, upload, state=state, expires_at=None)
            return repository.shares_storage(s, upload)

        try:
            shared = await self.db.run(record)
            recorded = True
        except StorageFull:
            # A database on a full disk: the bytes go first, to make room, unless another
            # upload uses them (or that cannot be read: then they stay).
            recorded = False
            try:
                shared = await self.db.run(lambda s: repository.shares_storage(s, upload))
            except Exception:
                shared = True
        if not shared:
            stored = await self.store.find(upload.storage_key)
            if isinstance(stored, TerminatableUpload):
                await self._storage(stored.terminate())
        if not recorded:
            await self._storage(self.db.run(record))
        (metrics.UPLOADS_EXPIRED if state == UploadState.EXPIRED else metrics.UPLOADS_TERMINATED).inc()
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

    async def sweep_orphans(self, batch: int = 500) -> int:
        """Remove stored objects that no upload row names and that nothing was written to
        for the orphan grace period: what a crash between storing and recording left
        (a form cut off mid-file, a creation whose row never committed). Returns how many.
        Runs at most once per sweep interval in a process."""
        now = time.time()
        if now - self._orphans_swept_at < self.settings.orphan_sweep_interval_seconds:
            return 0
        self._orphans_swept_at = now
        idle = await self.store.keys_idle_since(now - self.settings.orphan_grace_seconds)
        removed = 0
        for start in range(0, len(idle), batch):
            keys = idle[start : start + batch]
            in_use = await self.db.run(partial(repository.storage_keys_in_use, keys=keys))
            for key in keys:
                if key not in in_use:
                    await self.store.remove_key(key)
                    log.info("storage.orphan_removed", storage_key=key)
                    removed += 1
        return removed
