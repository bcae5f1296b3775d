"""Per-upload locks. A request that wants a held upload asks the holder to let go.

This mirrors tusd: a client that lost its connection resumes with HEAD while the old
PATCH may still be hanging on the server; the new request interrupts it (the old PATCH
records what it received and ends) instead of failing with "locked".

Every hold carries a generation, a number that grows with each hold of any upload (it
starts from the clock, so it grows across restarts too). Writers record it with every
offset they store, and a record from an older generation than the upload's is refused:
a writer that lost its hold cannot move the offset (fencing, as in Kleppmann's "How to
do distributed locking").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

from uploader.observability import metrics


class UploadLocked(Exception):
    """The holder did not let go in time."""


class LeaseLost(Exception):
    """This request no longer holds its upload: another writer may have it."""


class LockHolder:
    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.released = asyncio.Event()
        self._on_interrupt: list[Callable[[], None]] = []
        self.interrupted = False
        self.lost = False
        # Monotonic time until which a lease is certainly still ours (None: no lease).
        self.valid_until: float | None = None

    def on_interrupt(self, callback: Callable[[], None]) -> None:
        self._on_interrupt.append(callback)
        if self.interrupted:
            callback()

    def interrupt(self) -> None:
        if not self.interrupted:
            metrics.LOCK_INTERRUPTS.inc()
        self.interrupted = True
        for callback in self._on_interrupt:
            callback()

    def lose(self) -> None:
        """The lease ended under us: stop at once."""
        self.lost = True
        self.interrupt()

    def check(self) -> None:
        """Raise ``LeaseLost`` unless this holder may still write. No I/O: storage calls it
        before every batch it writes."""
        if not self.lost and self.valid_until is not None and time.monotonic() >= self.valid_until:
            self.lose()
        if self.lost:
            raise LeaseLost


class UploadLocker(Protocol):
    # Whether another process may hold the same upload (then writers claim their
    # generation in the database before they write).
    distributed: bool

    def hold(
        self, upload_id: str, *, interrupt: bool = True, patience: float | None = None
    ) -> AbstractAsyncContextManager[LockHolder]:
        """Hold the upload; ``interrupt=False`` waits without asking a holder to stop."""
        ...

    async def request_release(self, upload_id: str, wait_seconds: float) -> None:
        """Ask whoever holds the upload to let go, and wait a little for it (never fails)."""
        ...

    def interrupt_all(self) -> None:
        """Ask every holder to finish up (server shutdown)."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class Generations:
    """Increasing numbers from the clock (microseconds), never repeating in a process."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        self._last = max(self._last + 1, time.time_ns() // 1000)
        return self._last


class LocalLocker:
    """In-process locks: correct for one API process (the embedded default)."""

    distributed = False

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._holders: dict[str, LockHolder] = {}
        self.generations = Generations()

    @asynccontextmanager
    async def hold(
        self,
        upload_id: str,
        *,
        interrupt: bool = True,
        patience: float | None = None,
        generation: int | None = None,
    ) -> AsyncIterator[LockHolder]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.timeout if patience is None else patience)
        if upload_id in self._holders:
            await self._wait_for(upload_id, interrupt, deadline)
        holder = LockHolder(generation if generation is not None else self.generations.next())
        self._holders[upload_id] = holder
        try:
            yield holder
        finally:
            del self._holders[upload_id]
            holder.released.set()

    async def _wait_for(self, upload_id: str, interrupt: bool, deadline: float) -> None:
        """Until no one holds ``upload_id`` (asking holders to stop, if ``interrupt``), or
        ``UploadLocked`` at ``deadline``."""
        loop = asyncio.get_running_loop()
        metrics.LOCK_WAITS.inc()
        started = loop.time()
        try:
            while (current := self._holders.get(upload_id)) is not None:
                if interrupt:
                    current.interrupt()
                remaining = deadline - loop.time()
                try:
                    if remaining <= 0:
                        raise TimeoutError
                    await asyncio.wait_for(current.released.wait(), remaining)
                except TimeoutError:
                    raise UploadLocked(upload_id) from None
        finally:
            metrics.LOCK_WAIT_DURATION.observe(loop.time() - started)

    def holder(self, upload_id: str) -> LockHolder | None:
        return self._holders.get(upload_id)

    async def request_release(self, upload_id: str, wait_seconds: float) -> None:
        holder = self._holders.get(upload_id)
        if holder is None:
            return
        holder.interrupt()
        try:
            await asyncio.wait_for(holder.released.wait(), wait_seconds)
        except TimeoutError:
            return

    def interrupt_all(self) -> None:
        for holder in list(self._holders.values()):
            holder.interrupt()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
