"""In-process pipeline for the embedded default: runs the steps as asyncio tasks."""

from __future__ import annotations

import asyncio

from uploader.db.engine import Database
from uploader.db.models import Upload, UploadState
from uploader.events.bus import EventBus
from uploader.kit.logging import get_logger
from uploader.storage.base import UploadStore
from uploader.uploads import repository
from uploader.uploads.service import event_data
from workers.steps import sha256_of

log = get_logger(__name__)


class EmbeddedProcessor:
    def __init__(self, db: Database, store: UploadStore, events: EventBus) -> None:
        self.db = db
        self.store = store
        self.events = events
        self._tasks: set[asyncio.Task[None]] = set()

    def needs_work(self, sha256: str | None) -> bool:
        return sha256 is None  # the only step so far is the checksum

    async def submit(self, upload: Upload) -> None:
        task = asyncio.create_task(self._run(upload), name=f"process-{upload.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def resume_pending(self) -> None:
        """Uploads left received or processing by a stopped server are processed again."""
        pending = await self.db.run(
            lambda s: repository.in_states(s, [UploadState.RECEIVED, UploadState.PROCESSING])
        )
        for upload in pending:
            await self.submit(upload)

    async def _run(self, upload: Upload) -> None:
        upload_id = upload.id
        target = UploadState.PROCESSING if self.needs_work(upload.sha256) else UploadState.READY
        if upload.state == UploadState.RECEIVED and not await self.db.run(
            lambda s: repository.set_fields_if_state(s, upload, UploadState.RECEIVED, state=target)
        ):
            return  # terminated, or taken by another run
        if target == UploadState.READY:
            log.info("processing.ready", upload_id=upload_id, sha256=upload.sha256)
            await self._publish(upload, "upload.ready")
            return
        log.info("processing.started", upload_id=upload_id)
        await self._publish(upload, "processing.step_started", step="sha256")
        try:
            stored = await self.store.find(upload.storage_key)
            digest = await sha256_of(stored.reader(0, upload.length or 0))
        except Exception as exc:
            log.exception("processing.step_failed", upload_id=upload_id, step="sha256")
            # Only while still processing: a terminated upload stays terminated.
            reason = f"sha256: {exc}"
            if await self.db.run(
                lambda s: repository.set_fields_if_state(
                    s, upload, UploadState.PROCESSING, state=UploadState.FAILED, failure_reason=reason
                )
            ):
                await self._publish(upload, "upload.failed")
            return
        done = await self.db.run(
            lambda s: repository.set_fields_if_state(
                s, upload, UploadState.PROCESSING, state=UploadState.READY, sha256=digest
            )
        )
        if done:
            log.info("processing.ready", upload_id=upload_id, sha256=digest)
            await self._publish(upload, "processing.step_done", step="sha256")
            await self._publish(upload, "upload.ready")

    async def _publish(self, upload: Upload, event_type: str, **extra: str) -> None:
        await self.events.publish(upload.owner, upload.id, event_type, {**event_data(upload), **extra})

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
