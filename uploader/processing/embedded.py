"""The embedded default: the pipeline runs in the API process, as asyncio tasks.

No broker and no worker process: what Celery gives the full stack (retries with backoff,
a time limit, redelivery after a crash) is done here by a retry loop and by resuming
unfinished uploads when the server starts.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uploader.db.engine import Database
from uploader.db.models import Upload, UploadState
from uploader.kit.logging import get_logger
from uploader.processing.pipeline import TRANSIENT_ERRORS, Pipeline, unavailable_reason
from uploader.processing.steps.sniff import SNIFF_BYTES
from uploader.settings import Settings
from uploader.uploads import repository

log = get_logger(__name__)


class EmbeddedProcessor:
    head_bytes = SNIFF_BYTES

    def __init__(self, settings: Settings, db: Database, pipeline: Pipeline, concurrency: int = 2) -> None:
        self.settings = settings
        self.db = db
        self.pipeline = pipeline
        # Image work competes with uploads for the same cores: a few pipelines at a time.
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()

    def processed_from_head(self, upload: Upload, head: bytes) -> dict[str, Any] | None:
        return self.pipeline.processed_from_head(upload, head)

    async def announce_processed(self, upload: Upload) -> None:
        await self.pipeline.announce_processed(upload)

    async def submit(self, upload: Upload) -> None:
        task = asyncio.create_task(self._run(upload.id), name=f"process-{upload.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def resume_pending(self) -> None:
        """Uploads left received or processing by a stopped server are processed again."""
        pending = await self.db.run(
            lambda s: repository.in_states(s, [UploadState.RECEIVED, UploadState.PROCESSING])
        )
        for upload in pending:
            await self.submit(upload)

    async def _run(self, upload_id: str) -> None:
        retries = 0
        while True:
            try:
                async with self._slots:
                    await self.pipeline.run(upload_id)
                return
            except TRANSIENT_ERRORS as exc:
                if retries >= self.settings.task_max_retries:
                    await self._give_up(upload_id, exc)
                    return
                delay = self.settings.task_retry_backoff_seconds * 2**retries
                retries += 1
                log.warning(
                    "processing.retry", upload_id=upload_id, attempt=retries, delay=delay, error=str(exc)
                )
                await asyncio.sleep(delay)

    async def _give_up(self, upload_id: str, exc: BaseException) -> None:
        try:
            await self.pipeline.fail(upload_id, unavailable_reason(exc))
        except TRANSIENT_ERRORS:
            log.exception("processing.abandoned", upload_id=upload_id)  # resumed at the next start

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
