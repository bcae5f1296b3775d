"""Processing steps: plain functions over an upload's bytes, idempotent."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator


async def sha256_of(blocks: AsyncIterator[bytes]) -> str:
    """Hex SHA-256 of a byte stream; hashing runs off the event loop (hashlib drops the GIL)."""
    digest = hashlib.sha256()
    async for block in blocks:
        await asyncio.to_thread(digest.update, block)
    return digest.hexdigest()
