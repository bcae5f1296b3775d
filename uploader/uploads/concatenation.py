"""Concatenation (tus ``concatenation``): a final upload made of partial ones, joined
once every part is complete."""

from __future__ import annotations

import contextlib
from typing import Any

from uploader.db.models import Upload, UploadState
from uploader.kit.errors import ProblemError
from uploader.kit.logging import get_logger
from uploader.storage.base import (
    ConcatenatableUpload,
    StoredUpload,
    TerminatableUpload,
)
from uploader.uploads import repository
from uploader.uploads.completion import Completion

log = get_logger(__name__)


class Concatenation(Completion):
    """Joining the parts of a final upload."""

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

        def record(s: Any) -> None:
            repository.set_fields(s, final, state=UploadState.FAILED, failure_reason=reason, expires_at=None)
            self._report(s, final)

        await self.db.run(record)
        await self._publish(final, "upload.failed")
