"""Malware scanning with ClamAV: the whole file, streamed from storage to clamd in bounded
chunks, before any decoder reads it. Malware ends the upload ``rejected`` (reason
``malware: <signature>``); clamd away is retried like any dependency, then the upload
fails with ``scan.unavailable``; a file longer than clamd takes is rejected or kept
unscanned, as ``UPLOADER_SCAN_OVERSIZE`` says."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection

from uploader.db.models import Upload
from uploader.processing.clamav import Clamd
from uploader.processing.steps.base import StepContext, StepRejected, StepResult


class ScanStep:
    name: str = "scan"
    types: Collection[str] | None = None
    records: tuple[str, ...] = ()  # the verdict is the step's detail; a rejection, the reason
    announces: tuple[str, ...] = ()
    from_arrival: bool = False

    def __init__(self, clamd: Clamd, oversize: str) -> None:
        self.clamd = clamd
        self.oversize = oversize

    async def run(self, upload: Upload, context: StepContext) -> StepResult:
        length = upload.length or 0
        blocks = _reporting(context.blocks(upload, 0, length), context.throttled(length))
        verdict = await self.clamd.scan(blocks)
        if verdict.signature is not None:
            raise StepRejected(f"malware: {verdict.signature}")
        if verdict.too_large:
            if self.oversize == "skip":
                return StepResult(outcome="skipped", detail="not scanned: longer than the scanner takes")
            raise StepRejected(
                f"scan.too_large: {length} bytes are more than the scanner takes (clamd's StreamMaxLength)"
            )
        return StepResult(detail="clean")


async def _reporting(
    blocks: AsyncIterator[bytes], report: Callable[[int], Awaitable[None]]
) -> AsyncIterator[bytes]:
    done = 0
    async for block in blocks:
        yield block
        done += len(block)
        await report(done)
