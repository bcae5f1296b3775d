"""What the upload service needs from a way of running the processing pipeline."""

from __future__ import annotations

from typing import Protocol

from uploader.db.models import Upload


class Processor(Protocol):
    def needs_work(self, sha256: str | None) -> bool:
        """Whether a completed upload whose digest is (or is not) known has steps left."""
        ...

    async def submit(self, upload: Upload) -> None:
        """Process a completed upload (called after its transaction committed)."""
        ...
