"""Per-upload locks. A request that wants a held upload asks the holder to let go.

This mirrors tusd: a client that lost its connection resumes with HEAD while the old
PATCH may still be hanging on the server; the new request interrupts it (the old PATCH
records what it received and ends) instead of failing with "locked".
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol


class UploadLocked(Exception):
    """The holder did not let go in time."""


class LockHolder:
    def __init__(self) -> None:
        self.released = asyncio.Event()
        self._on_interrupt: list[Callable[[], None]] = []
        self.interrupted = False

    def on_interrupt(self, callback: Callable[[], None]) -> None:
        self._on_interrupt.append(callback)
        if self.interrupted:
            callback()

    def interrupt(self) -> None:
        self.interrupted = True
        for callback in self._on_interrupt:
            callback()


class UploadLocker(Protocol):
    def hold(self, upload_id: str) -> AbstractAsyncContextManager[LockHolder]: ...

    def interrupt_all(self) -> None:
        """Ask every holder to finish up (server shutdown)."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class LocalLocker:
    """In-process locks: correct for one API process (the embedded default)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._holders: dict[str, LockHolder] = {}

    @asynccontextmanager
    async def hold(self, upload_id: str) -> AsyncIterator[LockHolder]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while (current := self._holders.get(upload_id)) is not None:
            current.interrupt()
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                await asyncio.wait_for(current.released.wait(), remaining)
            except TimeoutError:
                raise UploadLocked(upload_id) from None
        holder = LockHolder()
        self._holders[upload_id] = holder
        try:
            yield holder
        finally:
            del self._holders[upload_id]
            holder.released.set()

    def interrupt(self, upload_id: str) -> None:
        holder = self._holders.get(upload_id)
        if holder is not None:
            holder.interrupt()

    def interrupt_all(self) -> None:
        for holder in list(self._holders.values()):
            holder.interrupt()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
