"""S3 / MinIO backend: one multipart upload per tus upload.

Layout under the configured prefix, for an upload with storage key ``K``:

- ``K``              the final object, once the upload is complete;
- ``K.info``         JSON with the multipart upload id, the part size and its checksum;
- ``K.tail/<end>``   the bytes after the last whole part, up to offset ``<end>``.

Part ``n`` always holds bytes ``[(n-1)*part_size, n*part_size)``, so an offset alone says
which parts are valid and which tail belongs to it. A write never changes what an
earlier offset refers to: a crash or a rejected request (checksum mismatch) leaves the
previous offset's tail in place, and parts past the recorded offset are simply written
again. Memory per active upload is bounded by a few parts.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import io
import json
import math
import re
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Collection
from dataclasses import dataclass
from typing import Any, TypeVar

import aioboto3
from aiohttp import payload as http_payload
from aiohttp.abc import AbstractStreamWriter
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from uploader.observability import metrics, tracing
from uploader.storage.base import (
    AlreadyFinished,
    Checkpoint,
    CheckpointRecorder,
    Fence,
    RunningDigest,
    StorageUnavailable,
    StoredUpload,
    WriteProgress,
)

MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * 1024 * MiB
MAX_PARTS = 10_000
READ_BLOCK = 1024 * 1024
# Every part carries its CRC32, which S3 checks on arrival and composes into the object's
# checksum. Declared when the multipart upload starts, as S3 clients do: without it, S3
# (and moto) derive a whole-object CRC64 at completion instead.
PART_CHECKSUM = "CRC32"
MAX_COPY_BYTES = 5 * 1024**3  # CopyObject's limit
COPY_PART_BYTES = 1024**3
_STORAGE_KEY = re.compile(r"^[0-9a-f]{32}$")  # what ``new_storage_key`` makes
T = TypeVar("T")
Buffer = bytes | memoryview


def choose_part_size(length: int | None, max_upload_size: int, preferred: int) -> int:
    """At least ``preferred`` (>= 5 MiB), large enough for 10,000 parts to hold the upload."""
    needed = math.ceil((length if length is not None else max_upload_size) / MAX_PARTS)
    size = max(preferred, MIN_PART_SIZE, needed)
    return min(MAX_PART_SIZE, math.ceil(size / MiB) * MiB)


async def _s3(call: Awaitable[T]) -> T:
    """An S3 call whose failure (after the client's own retries) means 'storage unavailable'."""
    try:
        return await call
    except (ClientError, BotoCoreError) as exc:
        raise StorageUnavailable(f"S3: {exc}") from exc


def _request_started(model: Any, context: dict[str, Any], **_: Any) -> None:
    span = tracing.start_span(f"S3.{model.name}", **{"rpc.system": "aws-api", "rpc.method": model.name})
    context["uploader_call"] = (model.name, time.perf_counter(), span)


def _request_ended(context: dict[str, Any], **_: Any) -> None:
    """Every call the client makes, its retries included, by API operation (and in a span
    of its own when tracing is on)."""
    call = context.pop("uploader_call", None)
    if call is not None:
        operation, started, span = call
        metrics.S3_REQUEST_DURATION.labels(operation).observe(time.perf_counter() - started)
        if span is not None:
            span.end()


def _is_missing(exc: BaseException) -> bool:
    cause = exc.__cause__ if isinstance(exc, StorageUnavailable) else exc
    if isinstance(cause, ClientError):
        code = str(cause.response.get("Error", {}).get("Code", ""))
        return code in ("NoSuchKey", "404", "NoSuchUpload", "NotFound")
    return False


@dataclass
class _Info:
    multipart_id: str
    part_size: int
    # None for multipart uploads started without a declared part checksum.
    checksum: str | None = None


class S3Upload:
    def __init__(self, store: S3Store, key: str) -> None:
        self.store = store
        self.key = key
        self.object_key = store.prefix + key
        self._info: _Info | None = None

    # -- bookkeeping objects -----------------------------------------------------

    def _tail_key(self, end: int) -> str:
        return f"{self.object_key}.tail/{end}"

    async def info(self) -> _Info:
        if self._info is None:
            self._info = self.store.known_info.get(self.key)
        if self._info is None:
            body = await self.store.get_bytes(f"{self.object_key}.info")
            data = json.loads(body)
            self._info = _Info(
                multipart_id=data["multipart_id"],
                part_size=int(data["part_size"]),
                checksum=data.get("checksum"),
            )
            self.store.remember(self.key, self._info)
        return self._info

    def _forget_info(self) -> None:
        self._info = None
        self.store.known_info.pop(self.key, None)

    async def _start(self, part_size: int) -> None:
        client = self.store.client
        created = await _s3(
            client.create_multipart_upload(
                Bucket=self.store.bucket, Key=self.object_key, ChecksumAlgorithm=PART_CHECKSUM
            )
        )
        self._info = _Info(multipart_id=created["UploadId"], part_size=part_size, checksum=PART_CHECKSUM)
        payload = {"multipart_id": self._info.multipart_id, "part_size": part_size, "checksum": PART_CHECKSUM}
        await self.store.put_bytes(f"{self.object_key}.info", json.dumps(payload).encode())
        self.store.remember(self.key, self._info)

    async def _tails(self) -> list[tuple[int, str]]:
        keys = await self.store.list_keys(f"{self.object_key}.tail/")
        return sorted((int(k.rsplit("/", 1)[1]), k) for k in keys)

    async def _drop_tails(self, keep: int | None) -> None:
        for end, key in await self._tails():
            if end != keep:
                await self.store.delete(key)

    # -- the StoredUpload protocol ---------------------------------------------

    @metrics.timed_storage("s3", "write")
    async def write_chunk(
        self,
        offset: int,
        body: AsyncIterator[bytes],
        progress: WriteProgress,
        checkpoint: Checkpoint | None = None,
        digest: RunningDigest | None = None,
        fence: Fence | None = None,
    ) -> int:
        try:
            return await self._write_chunk(offset, body, progress, checkpoint, digest, fence)
        except StorageUnavailable as exc:
            if await self._completed_before():
                raise AlreadyFinished(self.key) from exc
            raise

    async def _write_chunk(
        self,
        offset: int,
        body: AsyncIterator[bytes],
        progress: WriteProgress,
        checkpoint: Checkpoint | None,
        digest: RunningDigest | None,
        fence: Fence | None,
    ) -> int:
        info = await self.info()
        size = info.part_size
        # Tails of other offsets are leftovers of crashed or rejected writes. Clearing them
        # runs beside the parts; it ends before this write stores a tail of its own, so it
        # can never remove that one.
        housekeeping = asyncio.create_task(self._drop_tails(keep=offset))
        carried = offset % size
        part_start = offset - carried
        writer = _PartWriter(self, info, progress, offset, checkpoint)
        fresh = carried  # where this request's own bytes start (the digest has the tail's)
        try:
            tail = await self.store.get_bytes(self._tail_key(offset)) if carried else b""
            if len(tail) != carried:
                raise StorageUnavailable(f"tail of {self.key} holds {len(tail)} bytes, expected {carried}")
            # The received chunks themselves wait for a part to fill, and go out as they
            # are: nothing copies a part's bytes on the way to S3.
            pending = _Chunks([tail] if tail else [])
            async for chunk in body:
                pending.append(chunk)
                while pending.size >= size:
                    part = pending.take(size)
                    if digest is not None:
                        await asyncio.to_thread(digest.update, _skip(part, fresh))
                    fresh = 0
                    if fence is not None:
                        fence.check()  # a writer that lost its lock sends no more parts
                    await writer.submit(part_start // size + 1, part, part_start + size)
                    part_start += size
            if fence is not None:
                try:
                    fence.check()
                except BaseException:
                    writer.cancel()  # a writer that lost its lock lands no more parts
                    raise
            await writer.drain()
            await housekeeping
            end = part_start + pending.size
            if pending.size and end != offset:
                rest = pending.take(pending.size)
                if digest is not None:
                    await asyncio.to_thread(digest.update, _skip(rest, fresh))
                if fence is not None:
                    fence.check()
                await self.store.put_buffers(self._tail_key(end), rest)
                progress.written = end - offset
        finally:
            await writer.close()
            if not housekeeping.done():
                await asyncio.wait([housekeeping])
            if not housekeeping.cancelled():
                housekeeping.exception()  # seen: a failed clean-up is retried by the next write
        return progress.written

    def reader(self, start: int, end: int) -> AsyncIterator[bytes]:
        return self.store.read_range(self.object_key, start, end)

    async def discard_from(self, offset: int) -> None:
        # The tail of ``offset`` was never touched; later parts are rewritten by the next write.
        await self._drop_tails(keep=offset)

    @metrics.timed_storage("s3", "finish")
    async def finish(self, length: int) -> None:
        try:
            await self._finish(length)
        except StorageUnavailable:
            if not await self._completed_before(length):
                raise
            # Finished before, by a request that died before it recorded the completion
            # (and perhaps before it removed the bookkeeping): what it left goes now.
            await self.store.delete(f"{self.object_key}.info")
            await self._drop_tails(keep=None)

    async def _finish(self, length: int) -> None:
        info = await self.info()
        size = info.part_size
        count = math.ceil(length / size)
        if length % size:
            tail = await self.store.get_bytes(self._tail_key(length))
            await self._upload_part(info, count, [tail])
        if count == 0:
            await self.store.put_bytes(self.object_key, b"")
            await self._abort(info)
        else:
            await self._complete_multipart(info, await self._listed_parts(info, count))
        await self._drop_tails(keep=None)

    @metrics.timed_storage("s3", "terminate")
    async def terminate(self) -> None:
        with contextlib.suppress(StorageUnavailable):
            await self._abort(await self.info())
        for key in await self.store.list_keys(self.object_key):
            await self.store.delete(key)
        self._forget_info()

    async def presigned_url(self, expires_in: int, disposition: str, media_type: str) -> str:
        url: str = await self.store.client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.store.bucket,
                "Key": self.object_key,
                "ResponseContentDisposition": disposition,
                "ResponseContentType": media_type,
            },
            ExpiresIn=expires_in,
        )
        return url

    async def declare_length(self, length: int) -> None:
        return None  # parts are sized for the maximum upload size already

    @metrics.timed_storage("s3", "concatenate")
    async def concatenate(self, parts: list[StoredUpload], lengths: list[int]) -> None:
        """Server-side copies where S3 allows them (every part but the last >= 5 MiB)."""
        info = await self.info()
        if any(n < MIN_PART_SIZE for n in lengths[:-1]) or any(n == 0 for n in lengths):
            await self._concatenate_by_streaming(parts, lengths)
            return
        client, bucket = self.store.client, self.store.bucket
        completed = []
        for number, part in enumerate(parts, start=1):
            assert isinstance(part, S3Upload)
            copied = await _s3(
                client.upload_part_copy(
                    Bucket=bucket,
                    Key=self.object_key,
                    UploadId=info.multipart_id,
                    PartNumber=number,
                    CopySource={"Bucket": bucket, "Key": part.object_key},
                )
            )
            completed.append(_completed_part(info, number, copied["CopyPartResult"]))
        await self._complete_multipart(info, completed)

    async def _concatenate_by_streaming(self, parts: list[StoredUpload], lengths: list[int]) -> None:
        async def joined() -> AsyncIterator[bytes]:
            for part, length in zip(parts, lengths, strict=True):
                async for block in part.reader(0, length):
                    yield block

        await self.write_chunk(0, joined(), WriteProgress())

    # -- helpers ---------------------------------------------------------------

    async def _completed_before(self, length: int | None = None) -> bool:
        """After a failed call: whether the object is whole already (of ``length`` bytes,
        when given), completed by a request on any process that died, or lost its
        database, before it recorded the completion. Its multipart upload is gone then,
        though this process may still know it (or find its bookkeeping object, when the
        request died before removing that), so the known one is forgotten either way.
        A HEAD, on failures only; False when that fails too."""
        self._forget_info()
        try:
            size = await self._final_size()
        except StorageUnavailable:
            return False
        return size is not None and (length is None or size == length)

    async def _final_size(self) -> int | None:
        try:
            head = await _s3(self.store.client.head_object(Bucket=self.store.bucket, Key=self.object_key))
        except StorageUnavailable as exc:
            if _is_missing(exc):
                return None
            raise
        return int(head["ContentLength"])

    async def _upload_part(self, info: _Info, number: int, data: list[Buffer]) -> None:
        await _s3(
            self.store.client.upload_part(
                Bucket=self.store.bucket,
                Key=self.object_key,
                UploadId=info.multipart_id,
                PartNumber=number,
                Body=(body := _PartBody(data)),
                ContentLength=len(body),
                **({"ChecksumAlgorithm": info.checksum} if info.checksum else {}),
            )
        )

    async def _complete_multipart(self, info: _Info, parts: list[dict[str, Any]]) -> None:
        """The object appears; the upload's bookkeeping goes."""
        await _s3(
            self.store.client.complete_multipart_upload(
                Bucket=self.store.bucket,
                Key=self.object_key,
                UploadId=info.multipart_id,
                MultipartUpload={"Parts": parts},
            )
        )
        await self.store.delete(f"{self.object_key}.info")
        self._forget_info()

    async def _listed_parts(self, info: _Info, count: int) -> list[dict[str, Any]]:
        found: dict[int, dict[str, Any]] = {}
        marker = 0
        while True:
            page = await _s3(
                self.store.client.list_parts(
                    Bucket=self.store.bucket,
                    Key=self.object_key,
                    UploadId=info.multipart_id,
                    PartNumberMarker=marker,
                )
            )
            for part in page.get("Parts", []):
                found[int(part["PartNumber"])] = _completed_part(info, int(part["PartNumber"]), part)
            if not page.get("IsTruncated"):
                break
            marker = int(page["NextPartNumberMarker"])
        missing = [n for n in range(1, count + 1) if n not in found]
        if missing:
            raise StorageUnavailable(f"{self.key}: parts {missing[:5]} are missing")
        return [found[n] for n in range(1, count + 1)]

    async def _abort(self, info: _Info) -> None:
        with contextlib.suppress(StorageUnavailable):
            await _s3(
                self.store.client.abort_multipart_upload(
                    Bucket=self.store.bucket, Key=self.object_key, UploadId=info.multipart_id
                )
            )


def _completed_part(info: _Info, number: int, described: dict[str, Any]) -> dict[str, Any]:
    """A part as CompleteMultipartUpload names it: with its checksum when the upload has one."""
    part = {"PartNumber": number, "ETag": described["ETag"]}
    field = f"Checksum{info.checksum}"
    if info.checksum and described.get(field):
        part[field] = described[field]
    return part


class _Chunks:
    """Received chunks waiting to fill a part, kept as they came (never joined)."""

    def __init__(self, chunks: list[Buffer]) -> None:
        self.chunks: deque[Buffer] = deque(chunks)
        self.size = sum(len(c) for c in chunks)

    def append(self, chunk: Buffer) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)

    def take(self, count: int) -> list[Buffer]:
        """The first ``count`` bytes, as the chunks (or views of them) that hold them."""
        taken: list[Buffer] = []
        needed = count
        while needed:
            chunk = self.chunks.popleft()
            if len(chunk) > needed:
                view = memoryview(chunk)
                taken.append(view[:needed])
                self.chunks.appendleft(view[needed:])
                needed = 0
            else:
                taken.append(chunk)
                needed -= len(chunk)
        self.size -= count
        return taken


def _skip(buffers: list[Buffer], count: int) -> list[Buffer]:
    """``buffers`` without their first ``count`` bytes."""
    rest: list[Buffer] = []
    for buffer in buffers:
        if count >= len(buffer):
            count -= len(buffer)
            continue
        rest.append(memoryview(buffer)[count:] if count else buffer)
        count = 0
    return rest


class _PartBody(io.RawIOBase):
    """An object's bytes, held as the chunks they arrived in, as a seekable stream.

    The signer and the checksum read it in slices (views, not copies); the HTTP client
    sends the chunks themselves (``_PartPayload``), without a thread hop per read.
    """

    def __init__(self, buffers: list[Buffer]) -> None:
        super().__init__()
        self.buffers = [memoryview(b).cast("B") for b in buffers if len(b)]
        self._starts: list[int] = []
        total = 0
        for view in self.buffers:
            self._starts.append(total)
            total += len(view)
        self._size = total
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> Any:
        if self._position >= self._size:
            return b""
        if size is None or size < 0:
            index = bisect.bisect_right(self._starts, self._position) - 1
            first = self.buffers[index][self._position - self._starts[index] :]
            self._position = self._size
            return b"".join([first, *self.buffers[index + 1 :]])
        # At most up to the end of the current chunk: a short read, which readers allow.
        index = bisect.bisect_right(self._starts, self._position) - 1
        start = self._position - self._starts[index]
        chunk = self.buffers[index][start : start + size]
        self._position += len(chunk)
        return chunk

    def readinto(self, buffer: Any) -> int:
        chunk = self.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def __len__(self) -> int:
        return self._size


class _PartPayload(http_payload.Payload):
    """Sends a ``_PartBody``'s chunks as they are, from the event loop.

    aiohttp's generic stream payload reads a file object 64 KiB at a time in a thread,
    which for bytes already in memory is a thread hop per 64 KiB and a copy of each.
    """

    _value: _PartBody

    def __init__(self, value: _PartBody, *args: Any, **kwargs: Any) -> None:
        super().__init__(value, *args, **kwargs)
        self._size = len(value)

    async def write(self, writer: AbstractStreamWriter) -> None:
        # The whole part is handed to the transport at once (its chunks are referenced, not
        # copied), so the socket stays full and S3 receives it in large reads.
        for view in self._value.buffers:
            await writer.write(view, drain=False)  # type: ignore[call-arg]
        await writer.drain()

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self._value.buffers).decode(encoding, errors)


http_payload.register_payload(_PartPayload, _PartBody, order=http_payload.Order.try_first)


class _PartWriter:
    """Uploads parts concurrently (bounded) and records durable progress in order.

    A part that lands is recorded at once (a checkpoint, beside the transfer), even while
    the client is silent, so a crash loses at most the parts still in flight.
    """

    def __init__(
        self,
        upload: S3Upload,
        info: _Info,
        progress: WriteProgress,
        offset: int,
        checkpoint: Checkpoint | None,
    ) -> None:
        self.upload = upload
        self.info = info
        self.progress = progress
        self.offset = offset
        self.recorder = CheckpointRecorder(checkpoint) if checkpoint is not None else None
        self.in_flight: deque[tuple[asyncio.Task[None], int]] = deque()

    async def submit(self, number: int, data: list[Buffer], end: int) -> None:
        while len(self.in_flight) >= self.upload.store.concurrency:
            await self._wait_oldest()
        task = asyncio.create_task(self.upload._upload_part(self.info, number, data))
        task.add_done_callback(lambda _: self._count_landed())
        self.in_flight.append((task, end))

    def _count_landed(self) -> None:
        """The parts at the head that landed count, in order; a failed one stays there."""
        advanced = False
        while self.in_flight and self.in_flight[0][0].done():
            task, end = self.in_flight[0]
            if task.cancelled() or task.exception() is not None:
                break  # left at the head: whoever waits for it sees the failure
            self.in_flight.popleft()
            self.progress.written = end - self.offset
            advanced = True
        if advanced and self.recorder is not None:
            self.recorder.record(self.offset + self.progress.written)

    async def _wait_oldest(self) -> None:
        task = self.in_flight[0][0]
        await asyncio.wait({task})
        self._count_landed()
        if task.cancelled() or task.exception() is not None:
            await task  # raises the part's failure

    async def drain(self) -> None:
        """Every part stored and recorded; no checkpoint can arrive after this returns."""
        while self.in_flight:
            await self._wait_oldest()
        if self.recorder is not None:
            await self.recorder.finish()

    def cancel(self) -> None:
        """Stop the parts under way: S3 keeps no part whose body did not arrive whole."""
        for task, _ in self.in_flight:
            task.cancel()

    async def close(self) -> None:
        """On failure: parts already under way may finish and count; the rest is dropped."""
        if self.in_flight:
            await asyncio.wait([task for task, _ in self.in_flight])
        self._count_landed()
        if self.recorder is not None:
            with contextlib.suppress(Exception):
                await self.recorder.finish()
        self.in_flight.clear()


class S3Store:
    # A part in flight from a writer that lost its lock can still land after a newer
    # writer's: S3 has no condition to put on UploadPart.
    excludes_writers = False

    def __init__(
        self,
        bucket: str,
        prefix: str,
        endpoint_url: str | None,
        max_upload_size: int,
        part_size: int,
        concurrency: int,
        max_attempts: int = 5,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.max_upload_size = max_upload_size
        self.part_size = part_size
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self._session = aioboto3.Session()
        # Multipart ids of uploads this process has seen: saves a GET per PATCH.
        self.known_info: OrderedDict[str, _Info] = OrderedDict()
        self._client_context: Any = None
        self.client: Any = None

    async def start(self) -> None:
        """One client and connection pool per process, for its lifetime."""
        config = Config(
            retries={"max_attempts": self.max_attempts, "mode": "standard"},
            max_pool_connections=64,
            connect_timeout=10,
            read_timeout=60,
        )
        self._client_context = self._session.client("s3", endpoint_url=self.endpoint_url, config=config)
        self.client = await self._client_context.__aenter__()
        events = self.client.meta.events
        events.register("before-call.s3", _request_started)
        events.register("after-call.s3", _request_ended)
        events.register("after-call-error.s3", _request_ended)

    async def close(self) -> None:
        if self._client_context is not None:
            await self._client_context.__aexit__(None, None, None)
            self._client_context = None

    def remember(self, key: str, info: _Info) -> None:
        self.known_info[key] = info
        self.known_info.move_to_end(key)
        while len(self.known_info) > 10_000:
            self.known_info.popitem(last=False)

    @metrics.timed_storage("s3", "create")
    async def create(self, key: str, length: int | None) -> S3Upload:
        upload = S3Upload(self, key)
        await upload._start(choose_part_size(length, self.max_upload_size, self.part_size))
        return upload

    async def find(self, key: str) -> S3Upload:
        return S3Upload(self, key)

    async def check(self) -> None:
        await _s3(self.client.head_bucket(Bucket=self.bucket))

    # -- the orphan sweep: keys by when anything of theirs was last written ---------------

    def _storage_key_of(self, object_key: str) -> str | None:
        rest = object_key[len(self.prefix) :]
        key = rest.split("/", 1)[0].split(".", 1)[0]  # K, K.info, K.tail/…, K.derived/…
        return key if _STORAGE_KEY.match(key) else None

    async def _multipart_uploads(self, key: str = "") -> list[tuple[str, str, float]]:
        """(storage key, multipart id, when it began) of every unfinished multipart upload
        (of ``key``'s only, when given)."""
        found: list[tuple[str, str, float]] = []
        paginator = self.client.get_paginator("list_multipart_uploads")
        try:
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + key):
                for item in page.get("Uploads", []):
                    storage_key = self._storage_key_of(item["Key"])
                    if storage_key is not None:
                        found.append((storage_key, item["UploadId"], item["Initiated"].timestamp()))
        except (ClientError, BotoCoreError) as exc:
            raise StorageUnavailable(f"S3: {exc}") from exc
        return found

    async def keys_idle_since(self, before: float) -> list[str]:
        newest: dict[str, float] = {}
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for item in page.get("Contents", []):
                    key = self._storage_key_of(item["Key"])
                    if key is not None:
                        newest[key] = max(newest.get(key, 0.0), item["LastModified"].timestamp())
        except (ClientError, BotoCoreError) as exc:
            raise StorageUnavailable(f"S3: {exc}") from exc
        for key, multipart_id, begun in await self._multipart_uploads():
            newest[key] = max(newest.get(key, 0.0), begun)
            if newest[key] < before:  # begun long ago: its parts may still be arriving
                parts = await _s3(
                    self.client.list_parts(Bucket=self.bucket, Key=self.prefix + key, UploadId=multipart_id)
                )
                for part in parts.get("Parts", []):
                    newest[key] = max(newest[key], part["LastModified"].timestamp())
        return [key for key, modified in newest.items() if modified < before]

    @metrics.timed_storage("s3", "remove_key")
    async def remove_key(self, key: str) -> None:
        for found, multipart_id, _ in await self._multipart_uploads(key):
            if found == key:  # even one whose ``.info`` was never written
                await _s3(
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=self.prefix + key, UploadId=multipart_id
                    )
                )
        for object_key in await self.list_keys(self.prefix + key):
            await self.delete(object_key)
        self.known_info.pop(key, None)

    @metrics.timed_storage("s3", "quarantine")
    async def quarantine(self, key: str) -> str:
        # ``quarantine/`` is no storage key: the orphan sweep passes it by.
        source, target = self.prefix + key, f"{self.prefix}quarantine/{key}"
        try:
            head = await _s3(self.client.head_object(Bucket=self.bucket, Key=source))
        except StorageUnavailable as exc:
            if not _is_missing(exc):
                raise
        else:
            await self._copy(source, target, int(head["ContentLength"]))
        await self.remove_key(key)
        return f"s3://{self.bucket}/{target}"

    async def _copy(self, source: str, target: str, size: int) -> None:
        """Copy an object inside the bucket; past CopyObject's 5 GiB, part by part."""
        copy_source = {"Bucket": self.bucket, "Key": source}
        if size <= MAX_COPY_BYTES:
            # A checksum of the copy's own: the source's may be of its parts (a multipart upload).
            await _s3(
                self.client.copy_object(
                    Bucket=self.bucket, Key=target, CopySource=copy_source, ChecksumAlgorithm=PART_CHECKSUM
                )
            )
            return
        created = await _s3(self.client.create_multipart_upload(Bucket=self.bucket, Key=target))
        multipart_id, parts = created["UploadId"], []
        for number, start in enumerate(range(0, size, COPY_PART_BYTES), start=1):
            end = min(size, start + COPY_PART_BYTES) - 1
            copied = await _s3(
                self.client.upload_part_copy(
                    Bucket=self.bucket,
                    Key=target,
                    UploadId=multipart_id,
                    PartNumber=number,
                    CopySource=copy_source,
                    CopySourceRange=f"bytes={start}-{end}",
                )
            )
            parts.append({"PartNumber": number, "ETag": copied["CopyPartResult"]["ETag"]})
        await _s3(
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=target, UploadId=multipart_id, MultipartUpload={"Parts": parts}
            )
        )

    # -- derived files: ``K.derived/<name>``, so terminating an upload removes them too ----

    def _derived_key(self, key: str, name: str) -> str:
        return f"{self.prefix}{key}.derived/{name}"

    @metrics.timed_storage("s3", "put_derived")
    async def put_derived(self, key: str, name: str, data: bytes) -> None:
        await self.put_bytes(self._derived_key(key, name), data)

    async def derived_size(self, key: str, name: str) -> int | None:
        try:
            head = await _s3(self.client.head_object(Bucket=self.bucket, Key=self._derived_key(key, name)))
        except StorageUnavailable as exc:
            if _is_missing(exc):
                return None
            raise
        return int(head["ContentLength"])

    def derived_reader(self, key: str, name: str, start: int, end: int) -> AsyncIterator[bytes]:
        return self.read_range(self._derived_key(key, name), start, end)

    @metrics.timed_storage("s3", "delete_derived")
    async def delete_derived(self, key: str, keep: Collection[str] = ()) -> None:
        for object_key in await self.list_keys(self._derived_key(key, "")):
            if object_key.rsplit("/", 1)[1] not in keep:
                await self.delete(object_key)

    async def read_range(self, object_key: str, start: int, end: int) -> AsyncIterator[bytes]:
        if start >= end:
            return
        response = await _s3(
            self.client.get_object(Bucket=self.bucket, Key=object_key, Range=f"bytes={start}-{end - 1}")
        )
        stream = response["Body"]
        async with stream:  # releases the connection, also when the client goes away
            async for block in stream.iter_chunks(READ_BLOCK):
                yield block

    # -- small object helpers ----------------------------------------------------

    async def get_bytes(self, key: str) -> bytes:
        response = await _s3(self.client.get_object(Bucket=self.bucket, Key=key))
        stream = response["Body"]
        async with stream:
            data: bytes = await stream.read()
        return data

    async def put_bytes(self, key: str, data: bytes) -> None:
        await self.put_buffers(key, [data])

    async def put_buffers(self, key: str, buffers: list[Buffer]) -> None:
        body = _PartBody(buffers)
        await _s3(self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentLength=len(body)))

    async def delete(self, key: str) -> None:
        await _s3(self.client.delete_object(Bucket=self.bucket, Key=key))

    async def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(item["Key"] for item in page.get("Contents", []))
        except (ClientError, BotoCoreError) as exc:
            raise StorageUnavailable(f"S3: {exc}") from exc
        return keys
