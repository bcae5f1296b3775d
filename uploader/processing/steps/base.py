"""What a processing step is: the ``Step`` protocol, what a step returns, how it fails, and
what the pipeline hands it (``StepContext``: the upload's bytes, derived-file storage,
progress). Steps do no bookkeeping of their own: the pipeline records what they return
and announces it, so every step is retried, recorded and observed alike."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

from uploader.db.models import Upload
from uploader.settings import Settings
from uploader.storage.base import UploadStore


@dataclass
class StepResult:
    fields: dict[str, Any] = field(default_factory=dict)  # columns the step found
    outcome: str = "done"  # or "skipped"
    # Events that promise what the fields record (a variant is downloadable): published
    # only once the fields are in the database, so the step is recorded at once.
    announce: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    detail: str | None = None  # shown beside the step's state in the status ("clean")


class StepFailed(Exception):
    """A step that cannot succeed for this upload; ``reason`` is shown to users."""

    def __init__(self, reason: str, *, remove_bytes: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.remove_bytes = remove_bytes  # what arrived must not be kept (a refused type)


class StepRejected(StepFailed):
    """The file itself is refused (malware): the upload ends ``rejected``, and its bytes
    are removed, or quarantined where the deployment keeps them."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, remove_bytes=True)


@dataclass
class StepContext:
    """What a step may use: the settings, the upload's stored bytes and derived files,
    and progress reports (``processing.step_progress`` of the running step)."""

    settings: Settings
    store: UploadStore
    progress: Callable[[float], Awaitable[None]]
    # ``throttled(total)``: a callback taking bytes done, reporting a few times a second.
    throttled: Callable[[int], Callable[[int], Awaitable[None]]]

    async def blocks(self, upload: Upload, start: int, end: int) -> AsyncIterator[bytes]:
        stored = await self.store.find(upload.storage_key)
        async for block in stored.reader(start, end):
            yield block

    async def read(self, upload: Upload, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end``: for a step whose decoder needs them whole, bounded
        by a setting of its own."""
        buffer = io.BytesIO()
        async for block in self.blocks(upload, start, end):
            buffer.write(block)
        return buffer.getvalue()


class Step(Protocol):
    """One processing step.

    ``types``: the detected media types it applies to (None: every upload); for an upload
    of another type it is neither run nor listed. ``records``: the
    upload's fields it may set. ``announces``: the events it publishes besides
    ``processing.step_started``, ``step_progress`` and ``step_done``. ``from_arrival``:
    what it finds is known when the upload arrives whole (its first bytes, its SHA-256),
    so an upload that needs no other step is ready at once."""

    name: str
    types: Collection[str] | None
    records: tuple[str, ...]
    announces: tuple[str, ...]
    from_arrival: bool

    async def run(self, upload: Upload, context: StepContext) -> StepResult: ...


def applies(step: Step, detected_type: str | None) -> bool:
    return step.types is None or (detected_type is not None and detected_type in step.types)
