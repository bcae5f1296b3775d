"""The processing pipeline of a completed upload: sniff, checksum, image variants.

One code path, two ways to run it: ``EmbeddedProcessor`` awaits ``Pipeline.run`` in the
API process; the Celery task awaits the same method on a worker's event loop.

Every step is idempotent and the run is keyed by the upload's state: ``received`` moves
to ``processing`` once; a redelivered run finds ``processing`` and does the steps again
(variants are stored under fixed names, so a second run overwrites, never adds); only
one run can move ``processing`` to ``ready``, so an upload becomes ready exactly once.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import sqlalchemy.exc

from uploader.auth.principal import type_allowed
from uploader.db.engine import Database
from uploader.db.models import Upload, UploadState, utcnow
from uploader.events.bus import EventBus
from uploader.kit.logging import get_logger
from uploader.observability import metrics, tracing
from uploader.settings import Settings
from uploader.storage.base import StorageUnavailable, TerminatableUpload, UploadStore
from uploader.uploads import repository
from uploader.uploads.service import event_data
from uploader.webhooks import outbox
from workers.steps import IMAGE_TYPES, SNIFF_BYTES, sha256_of, sniff, types_agree

log = get_logger(__name__)

# Failures worth another try later: the step itself is fine, something it needs is not.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    StorageUnavailable,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    ConnectionError,  # EventsUnavailable among them: the event broker is away
)
PROGRESS_INTERVAL = 0.25  # seconds between progress events of one step
RECORD_STEPS_AFTER = 0.2  # a step taking longer is recorded on its own


@dataclass
class StepResult:
    fields: dict[str, Any] = field(default_factory=dict)  # columns the step found
    outcome: str = "done"  # or "skipped"
    # Events that promise what the fields record (a variant is downloadable): published
    # only once the fields are in the database, so the step is recorded at once.
    announce: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


class StepFailed(Exception):
    """A step that cannot succeed for this upload; ``reason`` is shown to users."""

    def __init__(self, reason: str, *, remove_bytes: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.remove_bytes = remove_bytes  # what arrived must not be kept (a refused type)


class Pipeline:
    def __init__(self, settings: Settings, db: Database, store: UploadStore, events: EventBus) -> None:
        self.settings = settings
        self.db = db
        self.store = store
        self.events = events
        # The steps, in order.
        self.steps: dict[str, Callable[[Upload], Awaitable[StepResult]]] = {
            "sniff": self._sniff,
            "sha256": self._sha256,
            "variants": self._variants,
        }

    async def run(self, upload_id: str) -> str | None:
        """Process one upload; returns the state it ended in (``None``: nothing to do).

        Transient errors propagate for the caller to retry; any other failure ends the
        upload in ``failed`` with a readable reason.
        """
        upload = await self.db.run(lambda s: repository.get(s, upload_id))
        if upload is None or upload.state not in (UploadState.RECEIVED, UploadState.PROCESSING):
            return None  # finished, removed, or a duplicate delivery after the fact
        if upload.state == UploadState.RECEIVED:
            steps = {name: {"state": "pending"} for name in self.steps}
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
                    if not await self._step(upload, step, unrecorded):
                        return await self._left_processing(upload)
        except TRANSIENT_ERRORS:
            raise
        except StepFailed as exc:
            await self.fail(upload_id, exc.reason, remove_bytes=exc.remove_bytes)
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
        detected = self._detect(upload, head)
        if detected in IMAGE_TYPES or not self._allowed(upload, detected):
            return None  # a full run, which makes the variants (or refuses the type)
        now = utcnow().isoformat()
        steps = {name: {"state": "done", "seconds": 0.0} for name in self.steps}
        steps["variants"]["state"] = "skipped"
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

    async def fail(self, upload_id: str, reason: str, *, remove_bytes: bool = False) -> bool:
        """End a received or processing upload in ``failed``; False if it was elsewhere.
        ``remove_bytes``: its bytes go too (recorded first, as a removal is)."""
        upload = await self.db.run(lambda s: repository.get(s, upload_id))
        if upload is None:
            return False
        removal = {"bytes_removed": True} if remove_bytes else {}
        for state in (UploadState.PROCESSING, UploadState.RECEIVED):
            if upload.state == state and await self._advance(
                upload, state, report=True, state=UploadState.FAILED, failure_reason=reason[:2000], **removal
            ):
                metrics.PROCESSING_FINISHED.labels("failed").inc()
                log.warning(
                    "processing.failed", upload_id=upload_id, reason=reason, bytes_removed=remove_bytes
                )
                if remove_bytes:
                    stored = await self.store.find(upload.storage_key)
                    if isinstance(stored, TerminatableUpload):
                        await stored.terminate()
                await self._publish(upload, "upload.failed")
                return True
        return False

    # -- steps -------------------------------------------------------------------------

    async def _step(self, upload: Upload, step: str, unrecorded: dict[str, Any]) -> bool:
        """Run one step. Its results are recorded at once if it took a while (the status
        then shows it) or has something to announce; a quick step's go with the next
        write, saving a transaction."""
        await self._publish(upload, "processing.step_started", step=step)
        begun = time.monotonic()
        try:
            with tracing.span(f"processing.{step}", **{"uploader.upload_id": upload.id}):
                result = await self.steps[step](upload)
        except StepFailed:
            metrics.STEPS.labels(step, "failed").inc()
            raise
        except BaseException:
            metrics.STEPS.labels(step, "error").inc()
            raise
        finally:
            metrics.STEP_DURATION.labels(step).observe(time.monotonic() - begun)
        metrics.STEPS.labels(step, result.outcome).inc()
        seconds = time.monotonic() - begun
        processing = dict(upload.processing or {})
        done = {"state": result.outcome, "seconds": round(seconds, 3)}
        processing["steps"] = {**processing.get("steps", {}), step: done}
        unrecorded.update(result.fields, processing=processing)
        for name, value in unrecorded.items():
            setattr(upload, name, value)  # later steps see what earlier ones found
        if seconds >= RECORD_STEPS_AFTER or result.announce:
            if not await self._advance(upload, UploadState.PROCESSING, **unrecorded):
                return False
            unrecorded.clear()
        for event_type, extra in result.announce:
            await self._publish(upload, event_type, **extra)
        await self._publish(upload, "processing.step_done", step=step, outcome=result.outcome)
        return True

    async def _sniff(self, upload: Upload) -> StepResult:
        head = await self._read(upload, 0, min(SNIFF_BYTES, upload.length or 0))
        detected = self._detect(upload, head)
        if not self._allowed(upload, detected):
            # The declared type passed at creation; what the bytes are did not.
            allowed = ", ".join(upload.allowed_types or [])
            raise StepFailed(
                f"upload.type_not_allowed: the file is {detected}, not among the token's types ({allowed})",
                remove_bytes=True,
            )
        return StepResult({"detected_type": detected})

    @staticmethod
    def _allowed(upload: Upload, detected: str) -> bool:
        return upload.allowed_types is None or type_allowed(detected, tuple(upload.allowed_types))

    @staticmethod
    def _detect(upload: Upload, head: bytes) -> str:
        detected = sniff(head)
        if not types_agree(upload.declared_type, detected):
            log.info(
                "processing.type_mismatch",
                upload_id=upload.id,
                declared=upload.declared_type,
                detected=detected,
            )
        return detected

    async def _sha256(self, upload: Upload) -> StepResult:
        if upload.sha256 is not None:
            digest, result = upload.sha256, StepResult()  # computed while the bytes arrived
        else:
            length = upload.length or 0
            report = self._progress_reporter(upload, "sha256", length)
            digest = await sha256_of(self._blocks(upload, 0, length), report)
            result = StepResult({"sha256": digest})
        if upload.declared_sha256 is not None and digest != upload.declared_sha256:
            # The client declared other bytes (Repr-Digest) than it sent: nothing of what
            # it sent is kept, and nothing will ever be deduplicated against it.
            raise StepFailed(
                f"upload.digest_mismatch: the bytes' SHA-256 is {digest}, "
                f"the declared one {upload.declared_sha256}",
                remove_bytes=True,
            )
        return result

    async def _variants(self, upload: Upload) -> StepResult:
        pillow_format = IMAGE_TYPES.get(upload.detected_type or "")
        if pillow_format is None:
            return StepResult(outcome="skipped")  # not an image we render, whatever was declared
        length = upload.length or 0
        if length > self.settings.image_max_bytes:
            return StepResult({"media": {"note": "too large to render variants"}}, "skipped")
        from workers.images import ImageRejected, render_variants  # Pillow: only when needed

        data = await self._read(upload, 0, length)
        specs = list(self.settings.variants)
        try:
            facts, rendered = await asyncio.to_thread(
                render_variants, data, pillow_format, specs, self.settings.image_max_pixels
            )
        except ImageRejected as exc:
            raise StepFailed(str(exc)) from exc
        del data
        variants: list[dict[str, Any]] = []
        for done, variant in enumerate(rendered, start=1):
            await self.store.put_derived(upload.storage_key, variant.name, variant.data)
            entry = {
                "name": variant.name,
                "format": variant.format,
                "media_type": variant.media_type,
                "width": variant.width,
                "height": variant.height,
                "size": len(variant.data),
                "sha256": hashlib.sha256(variant.data).hexdigest(),
            }
            variants.append(entry)
            await self._publish(
                upload, "processing.step_progress", step="variants", progress=done / len(rendered)
            )
        # Variants of an earlier run under names no longer configured go away.
        await self.store.delete_derived(upload.storage_key, keep={v["name"] for v in variants})
        return StepResult(
            {"media": facts.as_json(), "variants": variants},
            announce=[("variant.ready", {"variant": entry}) for entry in variants],
        )

    # -- helpers -------------------------------------------------------------------------

    async def _blocks(self, upload: Upload, start: int, end: int) -> AsyncIterator[bytes]:
        stored = await self.store.find(upload.storage_key)
        async for block in stored.reader(start, end):
            yield block

    async def _read(self, upload: Upload, start: int, end: int) -> bytes:
        buffer = io.BytesIO()
        async for block in self._blocks(upload, start, end):
            buffer.write(block)
        return buffer.getvalue()

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
