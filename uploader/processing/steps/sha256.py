"""SHA-256 of the whole upload: computed while the bytes arrived when they came in order
(then this step only checks it), else read back from storage here. A digest the client
declared (``Repr-Digest``) that the bytes do not match fails the upload and removes them."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection

from uploader.db.models import Upload
from uploader.processing.steps.base import StepContext, StepFailed, StepResult


async def sha256_of(
    blocks: AsyncIterator[bytes], progress: Callable[[int], Awaitable[None]] | None = None
) -> str:
    """Hex SHA-256 of a byte stream; hashing runs off the event loop (hashlib drops the GIL)."""
    digest = hashlib.sha256()
    done = 0
    async for block in blocks:
        await asyncio.to_thread(digest.update, block)
        done += len(block)
        if progress is not None:
            await progress(done)
    return digest.hexdigest()


class Sha256Step:
    name: str = "sha256"
    types: Collection[str] | None = None
    records: tuple[str, ...] = ("sha256",)
    announces: tuple[str, ...] = ()
    from_arrival: bool = True

    async def run(self, upload: Upload, context: StepContext) -> StepResult:
        if upload.sha256 is not None:
            digest, result = upload.sha256, StepResult()  # computed while the bytes arrived
        else:
            length = upload.length or 0
            digest = await sha256_of(context.blocks(upload, 0, length), context.throttled(length))
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
