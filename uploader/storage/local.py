"""Local-folder backend: one file per upload, written in place at the recorded offset."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from uploader.observability import metrics
from uploader.storage.base import (
    Checkpoint,
    CheckpointRecorder,
    Fence,
    RunningDigest,
    StorageFull,
    StorageUnavailable,
    StoredUpload,
    WriteProgress,
)

_KEY = re.compile(r"^[0-9a-f]{32}$")
WRITE_BATCH = 2 * 1024 * 1024
READ_BLOCK = 1024 * 1024
_MAX_IOV = 512
# How long a write waits for another writer's descriptor on the same file to close.
WRITER_WAIT_SECONDS = 10.0
# Hashing runs beside writing; batches of one upload are awaited in order, so one
# upload's digest is never fed out of order.
_HASHER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="hash")
# Small bodies (most uploads) are written and hashed by two threads of their own rather
# than the loop's default pool of up to six: with many uploads at once, fewer threads
# waking up means fewer hand-overs of the GIL away from the event loop.
_SMALL_BODIES = ThreadPoolExecutor(max_workers=2, thread_name_prefix="small-body")


class LocalUpload:
    def __init__(self, key: str, path: Path, checkpoint_bytes: int) -> None:
        self.key = key
        self.path = path
        self.checkpoint_bytes = checkpoint_bytes
        self._size_written: int | None = None  # the file's size after this handle's write

    @metrics.timed_storage("local", "write")
    async def write_chunk(
        self,
        offset: int,
        body: AsyncIterator[bytes],
        progress: WriteProgress,
        checkpoint: Checkpoint | None = None,
        digest: RunningDigest | None = None,
        fence: Fence | None = None,
    ) -> int:
        loop = asyncio.get_running_loop()
        sink = _FileSink(self, offset)
        in_flight: asyncio.Future[Any] | None = None
        in_flight_size = 0

        async def settle() -> None:
            # Count a batch only once the kernel has it.
            nonlocal in_flight
            if in_flight is not None:
                await asyncio.shield(in_flight)
                in_flight = None
                progress.written += in_flight_size

        def submit(buffers: list[bytes], size: int, last: bool) -> asyncio.Future[Any]:
            if fence is not None:
                fence.check()  # a writer that lost its lock stops before this batch lands
            if digest is not None and last and size < WRITE_BATCH:
                # A small last batch: one thread job writes and hashes it (one hop, not two).
                return loop.run_in_executor(_SMALL_BODIES, sink.write_and_hash, buffers, size, digest)
            # Writing and hashing both release the GIL: a big batch gets a thread for each.
            write = loop.run_in_executor(None, sink.write, buffers, size, last)
            if digest is None:
                return write
            return asyncio.gather(write, loop.run_in_executor(_HASHER, digest.update, buffers))

        pending: list[bytes] = []
        pending_size = 0
        recorded = offset
        recorder = CheckpointRecorder(checkpoint) if checkpoint is not None else None
        try:
            async for chunk in body:
                pending.append(chunk)
                pending_size += len(chunk)
                if pending_size < WRITE_BATCH and len(pending) < _MAX_IOV:
                    continue
                await settle()
                # One batch is written by a thread while the next one arrives.
                in_flight, in_flight_size = submit(pending, pending_size, last=False), pending_size
                pending, pending_size = [], 0
                durable = offset + progress.written
                if recorder is not None and durable - recorded >= self.checkpoint_bytes:
                    recorded = durable
                    recorder.record(durable)
            await settle()
            if pending:  # a small body is opened, written and closed by one thread job
                in_flight, in_flight_size = submit(pending, pending_size, last=True), pending_size
                pending, pending_size = [], 0
            await settle()
            if recorder is not None:
                await recorder.finish()
            if progress.written:  # the first batch cut the file at the offset
                self._size_written = offset + progress.written
        finally:
            if recorder is not None:  # no checkpoint may land after the caller's own record
                with contextlib.suppress(BaseException):
                    await recorder.finish()
            if in_flight is not None and not in_flight.done():
                # Cancelled while a thread still writes: close the file after it.
                in_flight.add_done_callback(lambda _: sink.close())
            else:
                try:
                    with contextlib.suppress(BaseException):
                        await settle()
                    # What arrived before the body failed still counts; not after a failure of
                    # storage itself, nor for a writer that lost its lock.
                    if pending and sink.healthy and _allows(fence):
                        sink.write(pending, pending_size, last=False)
                        if digest is not None:
                            digest.update(pending)
                        progress.written += pending_size
                finally:
                    sink.close()  # always: a descriptor left open keeps a deleted file's space
        return progress.written

    def _open_for_write(self, offset: int) -> int:
        """The upload's file; created by the first write (offset 0), so creation costs nothing."""
        try:
            return os.open(self.path, os.O_WRONLY | (os.O_CREAT if offset == 0 else 0), 0o640)
        except FileNotFoundError as exc:
            if offset:
                raise StorageUnavailable(f"stored file for {self.key} is missing") from exc
        except OSError as exc:
            raise _storage_error(exc) from exc
        try:
            # Only the two-letter folder: a storage root that vanished (an unmounted
            # volume) is an error to report, not a folder to make again.
            self.path.parent.mkdir(exist_ok=True)
            return os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o640)
        except OSError as exc:
            raise _storage_error(exc) from exc

    async def reader(self, start: int, end: int) -> AsyncIterator[bytes]:
        async for block in _read_file(self.path, start, end):
            yield block

    async def discard_from(self, offset: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.truncate(self.path, offset)

    @metrics.timed_storage("local", "finish")
    async def finish(self, length: int) -> None:
        # Metadata-only calls: quick enough for the loop.
        if length == 0:
            os.close(self._open_for_write(0))  # an empty upload still has its (empty) file
            return
        if self._size_written == length:
            return  # written here up to its end: nothing past it to cut
        try:
            if os.stat(self.path).st_size != length:
                os.truncate(self.path, length)
        except FileNotFoundError as exc:
            raise StorageUnavailable(f"stored file for {self.key} is missing") from exc

    @metrics.timed_storage("local", "terminate")
    async def terminate(self) -> None:
        def remove() -> None:
            self.path.unlink(missing_ok=True)
            shutil.rmtree(derived_dir(self.path), ignore_errors=True)

        await asyncio.to_thread(remove)

    @metrics.timed_storage("local", "concatenate")
    async def concatenate(self, parts: list[StoredUpload], lengths: list[int]) -> None:
        await asyncio.to_thread(self._concatenate, parts, lengths)

    def _concatenate(self, parts: list[StoredUpload], lengths: list[int]) -> None:
        self.path.parent.mkdir(exist_ok=True)
        with open(self.path, "wb") as target:
            for part, length in zip(parts, lengths, strict=True):
                assert isinstance(part, LocalUpload)
                try:
                    source = open(part.path, "rb")  # noqa: SIM115 - closed right below
                except FileNotFoundError:
                    raise StorageUnavailable(f"part {part.key} has no stored file") from None
                with source:
                    copied = _copy_range(source.fileno(), target.fileno(), length)
                if copied != length:
                    raise StorageUnavailable(f"part {part.key} holds {copied} of {length} bytes")

    async def declare_length(self, length: int) -> None:
        return None


class _FileSink:
    """The upload's file as one write sees it, opened by the thread of its first batch.

    Creating and opening a file can take a while on some filesystems; none of it runs on
    the event loop, and a small body is opened, written and closed by one thread job.
    """

    def __init__(self, upload: LocalUpload, offset: int) -> None:
        self.upload = upload
        self.offset = offset
        self.fd: int | None = None
        self.healthy = True  # no write of this sink failed

    def write(self, buffers: list[bytes], size: int, last: bool) -> None:
        try:
            if self.fd is None:
                self.fd = self.upload._open_for_write(self.offset)
                _exclusive(self.fd, self.upload.key)
                # Bytes past the recorded offset were never acknowledged (a crash mid-write).
                os.ftruncate(self.fd, self.offset)
                os.lseek(self.fd, self.offset, os.SEEK_SET)
            _write_all(self.fd, buffers, size)
        except BaseException:
            self.healthy = False
            self.close()
            raise
        if last:
            self.close()

    def write_and_hash(self, buffers: list[bytes], size: int, digest: RunningDigest) -> None:
        self.write(buffers, size, last=True)
        digest.update(buffers)

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


def _allows(fence: Fence | None) -> bool:
    if fence is None:
        return True
    try:
        fence.check()
    except Exception:
        return False
    return True


def _exclusive(fd: int, key: str) -> None:
    """Hold the file against every other writer's descriptor, in this process or another:
    a writer that lost its lock but still has a write in flight finishes it (and closes)
    before a newer writer cuts the file at its offset and writes. Released by closing,
    and by the kernel when a process dies."""
    deadline = time.monotonic() + WRITER_WAIT_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise StorageUnavailable(f"another writer still has the file of {key} open") from None
            time.sleep(0.01)


def _write_all(fd: int, buffers: list[bytes], total: int) -> None:
    try:
        written = os.writev(fd, buffers)
        if written < total:
            rest = b"".join(buffers)[written:]
            while rest:
                rest = rest[os.write(fd, rest) :]
    except OSError as exc:
        raise _storage_error(exc) from exc


def _storage_error(exc: OSError) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(str(exc))
    return StorageUnavailable(str(exc))


def _copy_range(source: int, target: int, length: int) -> int:
    copied = 0
    try:
        while copied < length:
            n = os.copy_file_range(source, target, length - copied)
            if n == 0:
                break
            copied += n
    except OSError:
        # Filesystems without copy_file_range: plain copy of what is left.
        os.lseek(source, copied, os.SEEK_SET)
        while copied < length:
            block = os.read(source, min(READ_BLOCK, length - copied))
            if not block:
                break
            os.write(target, block)
            copied += len(block)
    return copied


def derived_dir(path: Path) -> Path:
    return path.with_name(path.name + ".derived")


async def _read_file(path: Path, start: int, end: int) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError as exc:
        raise StorageUnavailable(f"stored file {path.name} is missing") from exc
    try:
        position = start
        while position < end:
            block = await loop.run_in_executor(None, os.pread, fd, min(READ_BLOCK, end - position), position)
            if not block:
                raise StorageUnavailable(f"stored file {path.name} is shorter than recorded")
            position += len(block)
            yield block
    finally:
        os.close(fd)


class LocalStore:
    excludes_writers = True  # each write holds its file's flock

    def __init__(self, root: Path, checkpoint_bytes: int) -> None:
        self.root = root
        self.checkpoint_bytes = checkpoint_bytes
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise ValueError(f"invalid storage key {key!r}")
        return self.root / key[:2] / key

    async def create(self, key: str, length: int | None) -> LocalUpload:
        # The file appears with the first write; an upload that never gets bytes costs nothing.
        return LocalUpload(key, self._path(key), self.checkpoint_bytes)

    async def find(self, key: str) -> LocalUpload:
        return LocalUpload(key, self._path(key), self.checkpoint_bytes)

    async def keys_idle_since(self, before: float) -> list[str]:
        def scan() -> list[str]:
            newest: dict[str, float] = {}
            for shard in self.root.iterdir():
                if not (len(shard.name) == 2 and shard.is_dir()):
                    continue
                for entry in shard.iterdir():
                    key = entry.name.split(".", 1)[0]  # the file, or its ``.derived`` folder
                    if not _KEY.match(key):
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        newest[key] = max(newest.get(key, 0.0), entry.stat().st_mtime)
            return [key for key, modified in newest.items() if modified < before]

        return await asyncio.to_thread(scan)

    @metrics.timed_storage("local", "quarantine")
    async def quarantine(self, key: str) -> str:
        # Beside the storage folder, not in it: nothing that lists uploads sees it there.
        target = self.root.parent / f"{self.root.name}-quarantine" / key

        def move() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.replace(self._path(key), target)

        try:
            await asyncio.to_thread(move)
        except OSError as exc:
            raise StorageUnavailable(f"{target}: {exc}") from exc
        await self.remove_key(key)  # what is left: derived files, bookkeeping
        return str(target)

    @metrics.timed_storage("local", "remove_key")
    async def remove_key(self, key: str) -> None:
        await LocalUpload(key, self._path(key), self.checkpoint_bytes).terminate()

    def _derived_path(self, key: str, name: str) -> Path:
        if "/" in name or name.startswith("."):
            raise ValueError(f"invalid derived file name {name!r}")
        return derived_dir(self._path(key)) / name

    @metrics.timed_storage("local", "put_derived")
    async def put_derived(self, key: str, name: str, data: bytes) -> None:
        target = self._derived_path(key, name)

        def write() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{name}.{os.getpid()}.partial")
            partial.write_bytes(data)
            os.replace(partial, target)  # atomic: a reader never sees half a file

        try:
            await asyncio.to_thread(write)
        except OSError as exc:
            raise _storage_error(exc) from exc

    async def derived_reader(self, key: str, name: str, start: int, end: int) -> AsyncIterator[bytes]:
        async for block in _read_file(self._derived_path(key, name), start, end):
            yield block

    async def derived_size(self, key: str, name: str) -> int | None:
        path = self._derived_path(key, name)
        try:
            return (await asyncio.to_thread(path.stat)).st_size
        except FileNotFoundError:
            return None

    @metrics.timed_storage("local", "delete_derived")
    async def delete_derived(self, key: str, keep: Collection[str] = ()) -> None:
        folder = derived_dir(self._path(key))

        def remove() -> None:
            for path in folder.glob("*") if folder.exists() else ():
                if path.name not in keep:
                    path.unlink(missing_ok=True)

        await asyncio.to_thread(remove)

    async def start(self) -> None:
        return None

    async def check(self) -> None:
        def probe() -> None:
            if not os.access(self.root, os.W_OK):
                raise StorageUnavailable(f"{self.root} is not writable")
            if shutil.disk_usage(self.root).free < 1024 * 1024:
                raise StorageUnavailable(f"{self.root} is full")

        await asyncio.to_thread(probe)

    async def close(self) -> None:
        return None
