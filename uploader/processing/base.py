"""What the upload service needs from a way of running the processing pipeline."""

from __future__ import annotations

from typing import Protocol

from uploader.db.models import Upload


class Processor(Protocol):
    async def submit(self, upload: Upload, head: bytes | None = None) -> None:
        """Process a completed upload (called after its transaction committed).

        ``head``: the upload's first bytes (``workers.steps.SNIFF_BYTES`` of them, or all
        of a shorter upload) when the caller saw them arrive, so that they need not be
        read back.
        """
        ...

    async def resume_pending(self) -> None:
        """Pick up uploads a stopped server left received or processing."""
        ...

    async def close(self) -> None: ...
