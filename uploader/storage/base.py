"""Storage Protocols: what the upload service needs from a backend, and nothing of HTTP.

A store creates and finds stored uploads; a stored upload writes a chunk at an offset
from an async stream, reads a byte range and finishes. Optional capabilities
(terminate, concatenate, deferred length) are separate Protocols, checked with
``isinstance`` where they are used, as tusd's composer does.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

Checkpoint = Callable[[int], Awaitable[None]]
"""Called with an absolute offset once every byte before it is durable in storage."""


class CheckpointRecorder:
    """Records a write's durable offsets beside the transfer, so the bytes keep flowing
    while the database writes: in order, one at a time, and always the latest one last.

    ``record`` never blocks and never raises; a failed record surfaces from ``finish``,
    which a backend awaits before its write returns, so no checkpoint lands after the
    caller's own record of the write.
    """

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self.latest = 0
        self.recorded = 0
        self.task: asyncio.Task[None] | None = None

    def record(self, offset: int) -> None:
        self.latest = offset
        if self.task is None or (
            self.task.done() and not self.task.cancelled() and self.task.exception() is None
        ):
            self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while self.recorded != self.latest:
            offset = self.latest
            await self.checkpoint(offset)
            self.recorded = offset

    async def finish(self) -> None:
        if self.task is not None:
            await self.task


@dataclass
class WriteProgress:
    """Bytes of the current write that are durable; read it even if the write failed."""

    written: int = 0


class RunningDigest:
    """SHA-256 of an upload's bytes from offset 0, fed by the backend as it writes them.

    Backends call ``update`` from whichever thread writes, in byte order; ``covered``
    says how many bytes the digest has seen, so a caller can tell whether it is whole.
    """

    def __init__(self, head_bytes: int = 0) -> None:
        self._hash = hashlib.sha256()
        self.covered = 0
        self._head_bytes = head_bytes
        self.head = b""  # the first ``head_bytes`` bytes, for whoever sniffs the content

    def update(self, buffers: Sequence[bytes | bytearray | memoryview]) -> None:
        for buffer in buffers:
            if self.covered < self._head_bytes:
                self.head += bytes(buffer[: self._head_bytes - self.covered])
            self._hash.update(buffer)
            self.covered += len(buffer)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class Fence(Protocol):
    def check(self) -> None:
        """Raise unless the writer may still write (its lock is still its own). Called
        before every batch or part goes to storage, so it does no I/O."""
        ...


class AlreadyFinished(Exception):
    """The upload's object is complete in storage already (finished by a request that
    could not record it): there is nothing left to write."""


class StorageFull(Exception):
    """The backend has no room for more bytes."""


class StorageUnavailable(Exception):
    """The backend cannot be reached or refuses to work."""


@runtime_checkable
class StoredUpload(Protocol):
    key: str

    async def write_chunk(
        self,
        offset: int,
        body: AsyncIterator[bytes],
        progress: WriteProgress,
        checkpoint: Checkpoint | None = None,
        digest: RunningDigest | None = None,
        fence: Fence | None = None,
    ) -> int:
        """Write ``body`` from ``offset``, dropping anything stored beyond it; return bytes written.

        ``digest``, when given, is fed every byte written, in order. ``fence`` is checked
        before each write reaches storage; what it raises ends the write.
        """
        ...

    def reader(self, start: int, end: int) -> AsyncIterator[bytes]:
        """Stream bytes ``[start, end)``."""
        ...

    async def discard_from(self, offset: int) -> None:
        """Forget every byte at or after ``offset`` (a rejected request's bytes)."""
        ...

    async def finish(self, length: int) -> None:
        """All ``length`` bytes are written; make the object final."""
        ...


@runtime_checkable
class UploadStore(Protocol):
    # Whether the backend itself keeps a second writer of an upload out while the first
    # one still writes (a local file's lock); without it, only the writer's own check of
    # its lock does.
    excludes_writers: bool

    async def create(self, key: str, length: int | None) -> StoredUpload: ...

    async def find(self, key: str) -> StoredUpload: ...

    async def put_derived(self, key: str, name: str, data: bytes) -> None:
        """Store a derived file (an image variant) of upload ``key``, replacing one of that
        name whole: readers see the old bytes or the new, never a mix."""
        ...

    def derived_reader(self, key: str, name: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Stream bytes ``[start, end)`` of a derived file."""
        ...

    async def derived_size(self, key: str, name: str) -> int | None:
        """The size of a derived file of upload ``key``; None when there is none."""
        ...

    async def delete_derived(self, key: str, keep: Collection[str] = ()) -> None:
        """Remove the derived files of upload ``key`` whose names are not in ``keep``."""
        ...

    async def keys_idle_since(self, before: float) -> list[str]:
        """Storage keys of which nothing was written since ``before`` (Unix time): the
        candidates of the orphan sweep, which removes those no upload row names."""
        ...

    async def remove_key(self, key: str) -> None:
        """Remove everything stored under ``key`` (bytes, parts, derived files), whatever
        state it was left in."""
        ...

    async def quarantine(self, key: str) -> str:
        """Move the stored bytes of ``key`` where nothing serves or sweeps them (a folder
        beside the storage folder; a ``quarantine/`` prefix in S3), remove the rest, and
        return where they went."""
        ...

    async def start(self) -> None:
        """Open clients and pools once per process."""
        ...

    async def check(self) -> None:
        """Raise ``StorageUnavailable`` when the backend cannot serve requests."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class TerminatableUpload(Protocol):
    async def terminate(self) -> None:
        """Remove every byte and object of this upload."""
        ...


@runtime_checkable
class ConcatenatableUpload(Protocol):
    async def concatenate(self, parts: list[StoredUpload], lengths: list[int]) -> None:
        """Fill this upload with the bytes of ``parts`` in order."""
        ...


@runtime_checkable
class LengthDeclarableUpload(Protocol):
    async def declare_length(self, length: int) -> None: ...


@runtime_checkable
class PresignableUpload(Protocol):
    async def presigned_url(self, expires_in: int, disposition: str, media_type: str) -> str:
        """A short-lived URL the client can GET the complete object from directly."""
        ...
