"""The event bus: every change of an upload is an event with an ordered id.

The embedded default keeps events in memory (a bounded history per upload and per
owner); subscribers get live events through queues. Ids grow monotonically across
restarts (they start from the clock), so a client's ``Last-Event-ID`` stays meaningful.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from uploader.kit.errors import DependencyUnavailable

TERMINAL_TYPES = frozenset(
    {"upload.ready", "upload.failed", "upload.rejected", "upload.expired", "upload.terminated"}
)


class EventsUnavailable(DependencyUnavailable):
    """The event broker cannot be reached or did not answer in time: worth a later retry."""

    def __init__(self, detail: str) -> None:
        super().__init__("redis", detail)


@dataclass(frozen=True)
class Event:
    id: int
    type: str
    upload_id: str
    owner: str
    data: dict[str, Any] = field(default_factory=dict)
    at: float = 0.0  # when it was published (Unix time): clients can measure how late it is

    @property
    def is_terminal(self) -> bool:
        return self.type in TERMINAL_TYPES


class EventBus(Protocol):
    async def publish(self, owner: str, upload_id: str, type: str, data: dict[str, Any]) -> Event: ...

    async def history(
        self, owner: str, upload_id: str | None, after: int | None, limit: int | None = None
    ) -> list[Event]:
        """Past events of one upload (or all of the owner's), oldest first, after an id;
        with ``limit``, only the latest that many of them."""
        ...

    async def forget(self, owner: str, upload_id: str) -> None:
        """Drop the history of an upload that is gone for good."""
        ...

    async def subscribe(self, owner: str, upload_id: str | None) -> Subscription:
        """Live events from the moment this returns: read history after it, and no event
        falls between the two."""
        ...

    async def close(self) -> None: ...


class Subscription(Protocol):
    async def next(self, wait_seconds: float) -> Event | None:
        """The next live event, or ``None`` when ``wait_seconds`` pass without one."""
        ...

    def queued(self) -> list[Event]:
        """Live events already waiting (taken without waiting)."""
        ...

    async def close(self) -> None: ...


class LocalEventBus:
    def __init__(self, per_upload: int = 1000, per_owner: int = 10_000, uploads: int = 10_000) -> None:
        self._next_id = time.time_ns() // 1000
        self._per_upload = per_upload
        self._per_owner = per_owner
        self._max_uploads = uploads
        self._by_upload: OrderedDict[str, deque[Event]] = OrderedDict()
        self._by_owner: dict[str, deque[Event]] = {}
        self._subscribers: set[LocalSubscription] = set()

    async def publish(self, owner: str, upload_id: str, type: str, data: dict[str, Any]) -> Event:
        self._next_id += 1
        now = time.time()
        event = Event(id=self._next_id, type=type, upload_id=upload_id, owner=owner, data=data, at=now)
        events = self._by_upload.get(upload_id)
        if events is None:
            events = self._by_upload[upload_id] = deque(maxlen=self._per_upload)
            while len(self._by_upload) > self._max_uploads:
                self._by_upload.popitem(last=False)
        events.append(event)
        self._by_owner.setdefault(owner, deque(maxlen=self._per_owner)).append(event)
        for subscriber in list(self._subscribers):
            subscriber.offer(event)
        return event

    async def history(
        self, owner: str, upload_id: str | None, after: int | None, limit: int | None = None
    ) -> list[Event]:
        source = self._by_upload.get(upload_id, ()) if upload_id else self._by_owner.get(owner, ())
        events = [e for e in source if e.owner == owner and (after is None or e.id > after)]
        return events[-limit:] if limit is not None else events

    async def forget(self, owner: str, upload_id: str) -> None:
        self._by_upload.pop(upload_id, None)
        owned = self._by_owner.get(owner)
        if owned is not None:
            self._by_owner[owner] = deque((e for e in owned if e.upload_id != upload_id), maxlen=owned.maxlen)

    async def subscribe(self, owner: str, upload_id: str | None) -> LocalSubscription:
        subscription = LocalSubscription(self._subscribers, owner, upload_id)
        self._subscribers.add(subscription)
        return subscription

    async def close(self) -> None:
        return None


class QueueSubscription:
    """Live events for one owner (or one of its uploads), queued for one reader.

    A slow reader loses the oldest undelivered events rather than growing memory; it can
    always catch up from the history with ``Last-Event-ID``.
    """

    def __init__(self, owner: str, upload_id: str | None) -> None:
        self.owner = owner
        self.upload_id = upload_id
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=1000)

    def offer(self, event: Event) -> None:
        if event.owner != self.owner or (self.upload_id and event.upload_id != self.upload_id):
            return
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(event)

    async def next(self, wait_seconds: float) -> Event | None:
        try:
            return await asyncio.wait_for(self.queue.get(), wait_seconds)
        except TimeoutError:
            return None

    def queued(self) -> list[Event]:
        waiting = []
        while not self.queue.empty():
            waiting.append(self.queue.get_nowait())
        return waiting


class LocalSubscription(QueueSubscription):
    def __init__(self, registry: set[LocalSubscription], owner: str, upload_id: str | None) -> None:
        super().__init__(owner, upload_id)
        self._registry = registry

    async def close(self) -> None:
        self._registry.discard(self)
