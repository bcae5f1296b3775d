"""The processing pipeline of a completed upload: the steps of ``processing.steps`` that
apply to its detected type, in order (sniff, checksum, then by type: image variants).

One code path, two ways to run it: ``EmbeddedProcessor`` awaits ``Pipeline.run`` in the
API process; the Celery task awaits the same method on a worker's event loop.

Every step is idempotent and the run is keyed by the upload's state: ``received`` moves
to ``processing`` once; a redelivered run finds ``processing`` and does the steps again
(variants are stored under fixed names, so a second run overwrites, never adds); only
one run can move ``processing`` to ``ready``, so an upload becomes ready exactly once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import sqlalchemy.exc

from uploader.db.engine import Database
from uploader.db.models import Upload, UploadState, utcnow
from uploader.events.bus import EventBus
from uploader.kit.logging import get_logger
from uploader.observability import metrics, tracing
from uploader.processing.clamav import ScannerUnavailable
from uploader.processing.steps import (
    Step,
    StepContext,
    StepFailed,
    StepRejected,
    applies,
    catalogue,
    pipeline_for,
)
from uploader.processing.steps.sniff import allowed, detect
from uploader.settings import Settings
from uploader.storage.base import StorageUnavailable, TerminatableUpload, UploadStore
from uploader.uploads import repository
from uploader.uploads.service import event_data
from uploader.webhooks import outbox

log = get_logger(__name__)

# Failures worth another try later: the step itself is fine, something it needs is not.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    StorageUnavailable,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    ConnectionError,  # EventsUnavailable among them: the event broker is away
)


def unavailable_reason(exc: BaseException) -> str:
    """Why an upload failed once the retries of a transient error ran out: the code of
    the dependency (``scan.unavailable``), else ``processing.unavailable``."""
    code = ScannerUnavailable.code if isinstance(exc, ScannerUnavailable) else "processing.unavailable"
    return f"{code}: {exc}"


PROGRESS_INTERVAL = 0.25  # seconds between progress events of one step
RECORD_STEPS_AFTER = 0.2  # a step taking longer is recorded on its own


class Pipeline:
    def __init__(self, settings: Settings, db: Database, store: UploadStore, events: EventBus) -> None:
        self.settings = settings
        self.db = db
        self.store = store
        self.events = events
        self.steps = catalogue(settings)

    async def run(self, upload_id: str) -> str | None:
        """Process one upload; returns the state it ended in (``None``: nothing to do).

        Transient errors propagate for the caller to retry; any other failure ends the
        upload in ``failed`` with a readable reason.
        """
        upload = await self.db.run(lambda s: repository.get(s, upload_id))
        if upload is None or upload.state not in (UploadState.RECEIVED, UploadState.PROCESSING):
            return None  # finished, removed, or a duplicate delivery after the fact
        if upload.state == UploadState.RECEIVED:
            pipeline = pipeline_for(self.steps, upload.detected_type)  # more once sniffed
            steps = {step.name: {"state": "pending"} for step in pipeline}
            started = {"steps": steps, "started_at": utcnow().isoformat()}
            if not await self._advance(
                upload, UploadState.RECEIVED, state=UploadState.PROCESSING, processing=started
            ):
                return None
            log.info("processing.started", upload_id=upload_id)
            await self._publish(upload, "upload.processing")
        else:
            log.info("processing.resumed", upload_id=upload_id)
        unrecorded: dict[str, Any] = {}
        try:
            async with asyncio.timeout(self.settings.task_soft_time_limit_seconds):
                for step in self.steps:
                    if not applies(step, upload.detected_type):
                        continue  # not for this type of file: not run, not listed
                    if not await self._step(upload, step, unrecorded):
                        return await self._left_processing(upload)
        except TRANSIENT_ERRORS:
            raise
        except StepRejected as exc:
            state = UploadState.REJECTED
            await self.fail(upload_id, exc.reason, remove_bytes=True, state=state, found=unrecorded)
            return state
        except StepFailed as exc:
            await self.fail(upload_id, exc.reason, remove_bytes=exc.remove_bytes, found=unrecorded)
            return UploadState.FAILED
        except TimeoutError:
            limit = self.settings.task_soft_time_limit_seconds
            await self.fail(upload_id, f"processing.timeout: not done within {limit} s")
            return UploadState.FAILED
        except Exception as exc:
            log.exception("processing.crashed", upload_id=upload_id)
            await self.fail(upload_id, f"processing.error: {type(exc).__name__}: {exc}")
            return UploadState.FAILED
        unrecorded["processing"] = self._finished(upload)
        ready = {**unrecorded, "state": UploadState.READY}
        if not await self._advance(upload, UploadState.PROCESSING, report=True, **ready):
            return await self._left_processing(upload)
        metrics.PROCESSING_FINISHED.labels("ready").inc()
        log.info("processing.ready", upload_id=upload_id, detected_type=upload.detected_type)
        await self._publish(upload, "upload.ready")
        return upload.state

    def processed_from_head(self, upload: Upload, head: bytes) -> dict[str, Any] | None:
        """What a full run would record for a just-completed upload, when what arrived with
        it is all the steps need: its first bytes to sniff, its SHA-256 (which the caller
        computed while it arrived, and records with these columns), and a type that has no
        variants. The caller records them with the completion (the upload is ready at once)
        and then calls ``announce_processed``. None: the upload needs a full run."""
        if upload.declared_sha256 is not None:
            return None  # a full run, which checks the declared digest
        detected = detect(upload, head)
        if not allowed(upload, detected):
            return None  # a full run, which refuses the type
        if any(not step.from_arrival for step in pipeline_for(self.steps, detected)):
            return None  # a full run, for the steps of its type (image variants, …)
        now = utcnow().isoformat()
        steps = {step.name: {"state": "done", "seconds": 0.0} for step in pipeline_for(self.steps, detected)}
        processing = {"steps": steps, "started_at": now, "finished_at": now}
        return {"state": UploadState.READY, "detected_type": detected, "processing": processing}

    async def announce_processed(self, upload: Upload) -> None:
        """The events of a full run, for an upload recorded with ``processed_from_head``."""
        metrics.PROCESSING_FINISHED.labels("ready").inc()
        for name, step in (upload.processing or {}).get("steps", {}).items():
            metrics.STEPS.labels(name, step["state"]).inc()
        during = {**event_data(upload), "state": str(UploadState.PROCESSING)}
        publish = partial(self.events.publish, upload.owner, upload.id)
        await publish("upload.processing", during)
        for name, step in (upload.processing or {}).get("steps", {}).items():
            await publish("processing.step_started", {**during, "step": name})
            await publish("processing.step_done", {**during, "step": name, "outcome": step["state"]})
        log.info("processing.ready", upload_id=upload.id, detected_type=upload.detected_type, from_head=True)
        await self._publish(upload, "upload.ready")

    async def _left_processing(self, upload: Upload) -> str | None:
        """The upload left ``processing`` under this run (terminated, expired, or finished
        by another delivery). Variants written for an upload that is gone go too."""
        current = await self.db.run(lambda s: repository.get(s, upload.id))
        if current is None or current.is_gone:
            await self.store.delete_derived(upload.storage_key)
        return current.state if current is not None else None

    async def fail(
        self,
        upload_id: str,
        reason: str,
        *,
        remove_bytes: bool = False,
        state: str = UploadState.FAILED,
        found: dict[str, Any] | None = None,
    ) -> bool:
        """End a received or processing upload in ``failed`` (or ``rejected``: the file
        itself is refused), recording ``found`` (what the steps found) with it; False if
        it was elsewhere. ``remove_bytes``: its bytes go too (recorded first, as a removal
        is), or to quarantine when rejected there.

        Deduplicated uploads share one stored object. A rejection is of the bytes, so
        every upload sharing them is rejected with it, in the same transaction. Any other
        failure is this upload's own: the object stays while another upload uses it."""
        upload = await self.db.run(lambda s: repository.get(s, upload_id))
        if upload is None:
            return False
        removal = {"bytes_removed": True} if remove_bytes else {}
        fields = {**(found or {}), "state": state, "failure_reason": reason[:2000], **removal}
        for expected in (UploadState.PROCESSING, UploadState.RECEIVED):
            if upload.state != expected:
                continue
            ended = await self.db.run(partial(self._end, upload, expected, fields, remove_bytes, state))
            if ended is None:
                continue
            rejected_with_it, bytes_still_used = ended
            metrics.PROCESSING_FINISHED.labels(state).inc()
            log.warning(f"processing.{state}", upload_id=upload_id, reason=reason, bytes_removed=remove_bytes)
            for sharer in rejected_with_it:
                log.warning("processing.rejected_with", upload_id=sharer.id, shared_with=upload_id)
            if remove_bytes and not bytes_still_used:
                await self._remove_bytes(upload, quarantine=state == UploadState.REJECTED)
            await self._publish(upload, f"upload.{state}")
            for sharer in rejected_with_it:
                await self._publish(sharer, f"upload.{state}")
            return True
        return False

    def _end(
        self,
        upload: Upload,
        expected: str,
        fields: dict[str, Any],
        remove_bytes: bool,
        state: str,
        connection: Any,
    ) -> tuple[list[Upload], bool] | None:
        """``fail``'s transaction: the upload's end and its webhook event, the uploads
        rejected with it (sharing its bytes) and theirs; and whether another upload still
        uses the stored object. None: the upload was no longer ``expected``."""
        if not repository.set_fields_if_state(connection, upload, expected, **fields):
            return None
        ended = [upload]
        others = repository.sharers(connection, upload) if remove_bytes else []
        if state == UploadState.REJECTED:
            same = {"state": state, "failure_reason": fields["failure_reason"], "bytes_removed": True}
            ended += [
                other
                for other in others
                if repository.set_fields_if_state(connection, other, other.state, **same)
            ]
        if self.settings.webhook_url:
            for each in ended:
                outbox.record(connection, each, [(f"upload.{each.state}", event_data(each))])
        return ended[1:], len(ended) - 1 < len(others)

    async def _remove_bytes(self, upload: Upload, *, quarantine: bool) -> None:
        if quarantine and self.settings.quarantine:
            where = await self.store.quarantine(upload.storage_key)
            log.warning("upload.quarantined", upload_id=upload.id, location=where)
            return
        stored = await self.store.find(upload.storage_key)
        if isinstance(stored, TerminatableUpload):
            await stored.terminate()

    # -- steps -------------------------------------------------------------------------

    async def _step(self, upload: Upload, step: Step, unrecorded: dict[str, Any]) -> bool:
        """Run one step. Its results are recorded at once if it took a while (the status
        then shows it) or has something to announce; a quick step's go with the next
        write, saving a transaction."""
        name = step.name
        await self._publish(upload, "processing.step_started", step=name)
        begun = time.monotonic()
        try:
            with tracing.span(f"processing.{name}", **{"uploader.upload_id": upload.id}):
                result = await step.run(upload, self._context(upload, name))
        except StepFailed:
            metrics.STEPS.labels(name, "failed").inc()
            # What the steps before it found is kept with the failure, and which one failed.
            processing = dict(upload.processing or {})
            failed = {"state": "failed", "seconds": round(time.monotonic() - begun, 3)}
            unrecorded["processing"] = {**processing, "steps": {**processing.get("steps", {}), name: failed}}
            raise
        except BaseException:
            metrics.STEPS.labels(name, "error").inc()
            raise
        finally:
            metrics.STEP_DURATION.labels(name).observe(time.monotonic() - begun)
        metrics.STEPS.labels(name, result.outcome).inc()
        seconds = time.monotonic() - begun
        processing = dict(upload.processing or {})
        done: dict[str, Any] = {"state": result.outcome, "seconds": round(seconds, 3)}
        if result.detail:
            done["detail"] = result.detail
        steps = {**processing.get("steps", {}), name: done}
        # Once sniffing has found the type, the steps it calls for are listed, pending.
        for later in pipeline_for(self.steps, result.fields.get("detected_type", upload.detected_type)):
            steps.setdefault(later.name, {"state": "pending"})
        processing["steps"] = steps
        unrecorded.update(result.fields, processing=processing)
        for field_name, value in unrecorded.items():
            setattr(upload, field_name, value)  # later steps see what earlier ones found
        if seconds >= RECORD_STEPS_AFTER or result.announce:
            if not await self._advance(upload, UploadState.PROCESSING, **unrecorded):
                return False
            unrecorded.clear()
        for event_type, extra in result.announce:
            await self._publish(upload, event_type, **extra)
        await self._publish(upload, "processing.step_done", step=name, outcome=result.outcome)
        return True

    # -- helpers -------------------------------------------------------------------------

    def _context(self, upload: Upload, step: str) -> StepContext:
        async def progress(fraction: float) -> None:
            await self._publish(upload, "processing.step_progress", step=step, progress=fraction)

        return StepContext(
            settings=self.settings,
            store=self.store,
            progress=progress,
            throttled=partial(self._progress_reporter, upload, step),
        )

    def _progress_reporter(self, upload: Upload, step: str, total: int) -> Callable[[int], Awaitable[None]]:
        last = time.monotonic()

        async def report(done: int) -> None:
            nonlocal last
            now = time.monotonic()
            if total and now - last >= PROGRESS_INTERVAL:
                last = now
                await self._publish(
                    upload, "processing.step_progress", step=step, progress=round(done / total, 4)
                )

        return report

    @staticmethod
    def _finished(upload: Upload) -> dict[str, Any]:
        return {**(upload.processing or {}), "finished_at": utcnow().isoformat()}

    async def _advance(self, upload: Upload, expected: str, *, report: bool = False, **fields: Any) -> bool:
        """Record ``fields`` while the upload is still ``expected``; with ``report``, the
        webhook event of the state it reaches goes to the outbox in the same transaction."""

        def work(connection: Any) -> bool:
            if not repository.set_fields_if_state(connection, upload, expected, **fields):
                return False
            if report and self.settings.webhook_url:
                outbox.record(connection, upload, [(f"upload.{upload.state}", event_data(upload))])
            return True

        return await self.db.run(work)

    async def _publish(self, upload: Upload, event_type: str, **extra: Any) -> None:
        await self.events.publish(upload.owner, upload.id, event_type, {**event_data(upload), **extra})
