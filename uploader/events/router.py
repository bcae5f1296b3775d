"""Server-Sent Events: ``/api/v1/uploads/{id}/events`` and ``/api/v1/events``."""

from __future__ import annotations

import asyncio
import json
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from fastapi import APIRouter, Header, Query, Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from uploader.auth.dependencies import Reading
from uploader.db.models import UploadState
from uploader.events.bus import Event, EventBus
from uploader.kit.errors import ProblemError
from uploader.observability import metrics
from uploader.uploads.dependencies import checked_upload_id, service_of

router = APIRouter(prefix="/api/v1", tags=["events"])
_SSE_CACHE: OrderedDict[tuple[int, str], str] = OrderedDict()
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
FINISHED = {UploadState.READY, UploadState.FAILED, UploadState.REJECTED, UploadState.EXPIRED}
REPLAY_CHUNK = 100  # events written at once while replaying, then the loop serves others
_open_streams: Counter[str] = Counter()  # per principal, on this process


def sse(event: Event) -> str:
    """The event as an SSE message; made once per event, however many clients follow it."""
    key = (event.id, event.upload_id)
    text = _SSE_CACHE.get(key)
    if text is None:
        published = datetime.fromtimestamp(event.at, UTC).isoformat(timespec="microseconds")
        payload = {"upload_id": event.upload_id, "at": published, **event.data}
        text = f"id: {event.id}\nevent: {event.type}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n"
        _SSE_CACHE[key] = text
        if len(_SSE_CACHE) > 4096:
            _SSE_CACHE.popitem(last=False)
    return text


def _after(last_event_id: str | None) -> int | None:
    if last_event_id is None or not last_event_id.strip():
        return None
    try:
        return int(last_event_id.strip())
    except ValueError:
        raise ProblemError("request.invalid", "Last-Event-ID must be an event id") from None


async def stream(
    bus: EventBus,
    owner: str,
    upload_id: str | None,
    after: int | None,
    keepalive: float,
    finished_state: str | None = None,
    replay_limit: int | None = None,
) -> AsyncIterator[str]:
    """History after ``after`` (the latest ``replay_limit`` events of it), then live
    events; a per-upload stream ends at a terminal event."""
    subscription = await bus.subscribe(owner, upload_id)  # before reading history: no gap
    try:
        yield "retry: 2000\n\n"
        last = after or 0
        history = await bus.history(owner, upload_id, after, replay_limit)
        for start in range(0, len(history), REPLAY_CHUNK):
            replayed = history[start : start + REPLAY_CHUNK]
            yield "".join(sse(event) for event in replayed)
            last = replayed[-1].id
            await asyncio.sleep(0)  # a long replay never holds the loop
        # A reprocessed upload has an earlier end in its history: only the latest event counts.
        if upload_id and history and history[-1].is_terminal:
            return
        if upload_id and finished_state is not None:
            # Finished, but its end is not in the history this client has not seen yet
            # (it reconnected after it, or the history went with a restart): say how it ended.
            yield f"event: upload.{finished_state}\ndata: {json.dumps({'upload_id': upload_id})}\n\n"
            return
        while True:
            live = await subscription.next(keepalive)
            if live is None:
                yield ": keep-alive\n\n"  # keeps proxies from closing an idle stream
                continue
            # Events that arrived together leave together: one write for a burst.
            chunk: list[str] = []
            for event in [live, *subscription.queued()]:
                if event.id <= last:
                    continue
                chunk.append(sse(event))
                last = event.id
                if upload_id and event.is_terminal:
                    yield "".join(chunk)
                    return
            if chunk:
                yield "".join(chunk)
    finally:
        await subscription.close()


class _CountedStream(StreamingResponse):
    """An event stream that counts towards its principal's open streams while it runs."""

    def __init__(self, owner: str, events: AsyncIterator[str]) -> None:
        super().__init__(events, media_type="text/event-stream", headers=SSE_HEADERS)
        self.owner = owner
        _open_streams[owner] += 1

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics.SSE_CLIENTS.inc()
        try:
            await super().__call__(scope, receive, send)
        finally:
            metrics.SSE_CLIENTS.dec()
            _open_streams[self.owner] -= 1
            if _open_streams[self.owner] <= 0:
                del _open_streams[self.owner]


def _response(
    request: Request, owner: str, upload_id: str | None, after: int | None, finished: str | None = None
) -> StreamingResponse:
    service = service_of(request)
    settings = request.app.state.settings
    if _open_streams[owner] >= settings.sse_max_streams_per_principal:
        raise ProblemError(
            "events.too_many_streams",
            f"at most {settings.sse_max_streams_per_principal} event streams at once",
            headers={"Retry-After": "5"},
        )
    # Following every upload of a principal replays a window of its history, not all of it.
    limit = settings.sse_replay_limit if upload_id is None else None
    events = stream(service.events, owner, upload_id, after, settings.sse_keepalive_seconds, finished, limit)
    return _CountedStream(owner, events)


@router.get("/uploads/{upload_id}/events")
async def upload_events(
    request: Request,
    upload_id: str,
    principal: Reading,
    last_event_id: str | None = Header(None, alias="Last-Event-ID"),
    since: str | None = Query(None, description="Last-Event-ID for clients that cannot set headers"),
) -> StreamingResponse:
    """One upload's events as Server-Sent Events; the stream ends when the upload does."""
    upload = await service_of(request).get(
        principal.owner_filter, checked_upload_id(upload_id), allow_gone=True
    )
    if upload.state == UploadState.TERMINATED:
        raise ProblemError("upload.not_found")
    upload = await request.app.state.direct.settle_on_read(upload)
    finished = upload.state if upload.state in FINISHED else None
    return _response(request, upload.owner, upload.id, _after(last_event_id or since), finished)


@router.get("/events")
async def all_events(
    request: Request,
    principal: Reading,
    last_event_id: str | None = Header(None, alias="Last-Event-ID"),
    since: str | None = Query(None, description="Last-Event-ID for clients that cannot set headers"),
) -> StreamingResponse:
    """Every event of the caller's uploads, as Server-Sent Events."""
    return _response(request, principal.name, None, _after(last_event_id or since))
