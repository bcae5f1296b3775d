"""Streaming ``multipart/form-data``: the request body as a sequence of fields and files.

python-multipart's push parser is fed the ASGI body chunk by chunk; its callbacks queue
what they found, and ``FormReader`` hands that out: a field's value (small, bounded), or
a file part's bytes as an async iterator the storage backend writes from. Nothing is
spooled: at most one request chunk is held at a time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from uploader.kit.errors import ProblemError

MAX_PARTS = 1000
MAX_FIELD_BYTES = 64 * 1024
MAX_HEADER_BYTES = 8 * 1024


@dataclass
class Part:
    name: str
    filename: str | None  # None: a plain field
    content_type: str | None
    headers: dict[str, str] = field(default_factory=dict)


def _utf8(value: str) -> str:
    """A header value kept as latin-1 text, read as the UTF-8 it was sent as."""
    return value.encode("latin-1").decode("utf-8", "replace")


def boundary_of(content_type: str | None) -> bytes:
    if not content_type:
        raise ProblemError("form.invalid", "Content-Type multipart/form-data is required")
    media_type, options = parse_options_header(content_type)
    if media_type != b"multipart/form-data":
        raise ProblemError("form.invalid", "Content-Type must be multipart/form-data")
    boundary = options.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise ProblemError("form.invalid", "the multipart boundary is missing or too long")
    return boundary


class FormReader:
    def __init__(self, content_type: str | None, body: AsyncIterator[bytes]) -> None:
        self._body = body
        self._events: deque[tuple[str, object]] = deque()
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, str] = {}
        self._header_bytes = 0
        self._parts = 0
        self._ended = False
        self._body_done = False
        callbacks = {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }
        self._parser = MultipartParser(boundary_of(content_type), callbacks)  # type: ignore[arg-type]

    # -- parser callbacks (synchronous: they only queue what they see) ------------------

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise ProblemError("form.too_many_parts", f"more than {MAX_PARTS} parts in one form")
        self._headers = {}
        self._header_bytes = 0

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_value += data[start:end]

    def _count_header(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES:
            raise ProblemError("form.header_too_large", f"part headers over {MAX_HEADER_BYTES} bytes")

    def _header_end(self) -> None:
        name = bytes(self._header_name).decode("latin-1").strip().lower()
        # Latin-1 keeps every byte as sent; browsers send names and file names as raw
        # UTF-8, which is decoded once the header is parsed.
        self._headers[name] = bytes(self._header_value).decode("latin-1").strip()
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get("content-disposition", ""))
        if disposition != b"form-data" or b"name" not in options:
            raise ProblemError("form.invalid", "each part needs Content-Disposition: form-data; name=...")
        filename = options.get(b"filename")
        part = Part(
            name=options[b"name"].decode("utf-8", "replace"),
            filename=filename.decode("utf-8", "replace") if filename is not None else None,
            content_type=_utf8(self._headers["content-type"]) if "content-type" in self._headers else None,
            headers={name: _utf8(value) for name, value in self._headers.items()},
        )
        self._events.append(("part", part))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if end > start:
            self._events.append(("data", bytes(data[start:end])))

    def _part_end(self) -> None:
        self._events.append(("end", None))

    def _end(self) -> None:
        self._ended = True

    # -- reading -----------------------------------------------------------------------

    async def _next_event(self) -> tuple[str, object] | None:
        while not self._events:
            if self._body_done:
                return None
            try:
                chunk = await anext(self._body)
            except StopAsyncIteration:
                self._body_done = True
                if not self._ended:
                    raise ProblemError(
                        "form.truncated", "the form ended before its closing boundary"
                    ) from None
                continue
            try:
                self._parser.write(chunk)
            except MultipartParseError as exc:
                raise ProblemError("form.invalid", f"malformed multipart body: {exc}") from exc
        return self._events.popleft()

    async def next_part(self) -> Part | None:
        """The next part's headers; ``None`` at the end of the form."""
        while True:
            event = await self._next_event()
            if event is None:
                return None
            kind, value = event
            if kind == "part":
                assert isinstance(value, Part)
                return value
            # Data of a part nobody read (a skipped field) is dropped.

    async def data(self) -> AsyncIterator[bytes]:
        """The current part's bytes, as they arrive."""
        while True:
            event = await self._next_event()
            if event is None:
                raise ProblemError("form.truncated", "the form ended inside a part")
            kind, value = event
            if kind == "end":
                return
            if kind == "data":
                assert isinstance(value, bytes)
                yield value

    async def field_value(self) -> str:
        value = bytearray()
        async for block in self.data():
            value += block
            if len(value) > MAX_FIELD_BYTES:
                raise ProblemError("form.field_too_large", f"a field value is over {MAX_FIELD_BYTES} bytes")
        return value.decode("utf-8", "replace")
