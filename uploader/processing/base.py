"""What the upload service needs from a way of running the processing pipeline."""

from __future__ import annotations

from typing import Protocol

from uploader.db.models import Upload


class Processor(Protocol):
    async def submit(self, upload: Upload) -> None:
        """Process a completed upload (called after its transaction committed)."""
        ...

    async def resume_pending(self) -> None:
        """Pick up uploads a stopped server left received or processing."""
        ...

    async def close(self) -> None: ...
