"""What the upload service needs from a way of running the processing pipeline."""

from __future__ import annotations

from typing import Any, Protocol

from uploader.db.models import Upload


class Processor(Protocol):
    # How many of an upload's first bytes ``processed_from_head`` wants kept on the way in.
    head_bytes: int

    def processed_from_head(self, upload: Upload, head: bytes) -> dict[str, Any] | None:
        """The columns processing would record, if the upload's first bytes (``head``) and
        the SHA-256 computed as it arrived (the caller has it) are all it needs; recorded
        with the upload's completion. None: ``submit`` it."""
        ...

    async def announce_processed(self, upload: Upload) -> None:
        """Publish what processing would have, for an upload completed with the columns of
        ``processed_from_head``."""
        ...

    async def submit(self, upload: Upload) -> None:
        """Process a completed upload (called after its transaction committed)."""
        ...

    async def resume_pending(self) -> None:
        """Pick up uploads a stopped server left received or processing."""
        ...

    async def close(self) -> None: ...
