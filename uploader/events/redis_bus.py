"""Event bus on Redis Streams, shared by every API process and worker of a deployment.

Each event is added to two streams, its upload's and its owner's, under one id from a
Redis counter, so ids are ordered across processes and ``Last-Event-ID`` works whichever
API process a client reconnects to.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from uploader.events.bus import Event, EventsUnavailable, QueueSubscription
from uploader.kit.redis import redis_client
from uploader.kit.resp import HotPath, LeanRedis
from uploader.kit.tasks import cancel_until_done

_PUBLISH = """
local id = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'id', id, 'event', ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'id', id, 'event', ARGV[1])
return id
"""


def _decode(fields: dict[bytes, bytes]) -> Event:
    body = json.loads(fields[b"event"])
    return Event(
        id=int(fields[b"id"]),
        type=body["type"],
        upload_id=body["upload_id"],
        owner=body["owner"],
        data=body["data"],
        at=float(body.get("at", 0.0)),
    )


class RedisEventBus:
    def __init__(
        self,
        url: str,
        prefix: str = "uploader:events",
        per_upload: int = 1000,
        per_owner: int = 10_000,
        upload_ttl_seconds: int = 7 * 24 * 3600,
        lean: LeanRedis | None = None,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.per_upload = per_upload
        self.per_owner = per_owner
        self.upload_ttl_seconds = upload_ttl_seconds
        self.redis: Redis = redis_client(url)
        self._hot = HotPath(self.redis, url, lean)  # publishing: every upload does, several times
        self._publish = self._hot.script(_PUBLISH)
        # One reader per stream for all of this process's subscribers to it: with many
        # clients following the same events, each event is read and decoded once.
        self._hubs: dict[str, _StreamHub] = {}

    def _stream(self, owner: str, upload_id: str | None) -> str:
        return f"{self.prefix}:upload:{upload_id}" if upload_id else f"{self.prefix}:owner:{owner}"

    async def publish(self, owner: str, upload_id: str, type: str, data: dict[str, Any]) -> Event:
        at = time.time()
        body = json.dumps({"type": type, "upload_id": upload_id, "owner": owner, "data": data, "at": at})
        keys = [f"{self.prefix}:seq", self._stream(owner, upload_id), self._stream(owner, None)]
        args: list[str | int] = [body, self.per_upload, self.per_owner, self.upload_ttl_seconds]
        try:
            event_id = await self._publish(keys=keys, args=args)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise EventsUnavailable(f"Redis: {exc}") from exc
        return Event(id=int(event_id), type=type, upload_id=upload_id, owner=owner, data=data, at=at)

    async def history(
        self, owner: str, upload_id: str | None, after: int | None, limit: int | None = None
    ) -> list[Event]:
        stream = self._stream(owner, upload_id)
        try:
            if limit is not None:  # the newest ``limit`` entries, read newest first
                newest: Any = await self.redis.xrevrange(stream, count=limit)
                entries: Any = list(reversed(newest))
            else:
                entries = await self.redis.xrange(stream)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise EventsUnavailable(f"Redis: {exc}") from exc
        events = (_decode(fields) for _, fields in entries)
        return [e for e in events if e.owner == owner and (after is None or e.id > after)]

    async def forget(self, owner: str, upload_id: str) -> None:
        try:
            await self.redis.delete(self._stream(owner, upload_id))
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise EventsUnavailable(f"Redis: {exc}") from exc

    async def subscribe(self, owner: str, upload_id: str | None) -> RedisSubscription:
        stream = self._stream(owner, upload_id)
        hub = self._hubs.get(stream)
        if hub is None:
            # Read from the newest entry as of now: anything older is history.
            newest: Any = await self.redis.xrevrange(stream, count=1)
            hub = self._hubs.get(stream)  # another subscriber may have made it meanwhile
            if hub is None:
                hub = self._hubs[stream] = _StreamHub(self, stream, newest[0][0] if newest else b"0-0")
        return hub.join(owner)

    async def close(self) -> None:
        for hub in list(self._hubs.values()):
            await hub.stop()
        await self._hot.close()
        await self.redis.aclose()


class _StreamHub:
    """Reads one stream on a connection of its own and hands each event to every member."""

    def __init__(self, bus: RedisEventBus, stream: str, position: bytes) -> None:
        self.bus = bus
        self.stream = stream
        self.position = position
        self.members: set[RedisSubscription] = set()
        self.redis: Redis = Redis.from_url(bus.url)
        self.stopped = False
        self.reader = asyncio.create_task(self._read(), name=f"events-{stream}")

    def join(self, owner: str) -> RedisSubscription:
        member = RedisSubscription(self, owner)
        self.members.add(member)
        return member

    async def leave(self, member: RedisSubscription) -> None:
        self.members.discard(member)
        if not self.members:
            await self.stop()

    async def stop(self) -> None:
        if self.bus._hubs.get(self.stream) is self:
            del self.bus._hubs[self.stream]
        self.stopped = True
        await cancel_until_done(self.reader)
        await self.redis.aclose()

    async def _read(self) -> None:
        while not self.stopped:
            try:
                reply: Any = await self.redis.xread({self.stream: self.position}, block=5000)
            except (RedisError, OSError):
                # redis-py may turn a cancelled read into a connection error: stop if asked.
                if self.stopped:
                    return
                await asyncio.sleep(0.5)  # Redis went away: members keep waiting, then resume
                continue
            for entry_id, fields in reply[0][1] if reply else ():
                self.position = entry_id
                event = _decode(fields)
                for member in list(self.members):
                    member.offer(event)


class RedisSubscription(QueueSubscription):
    def __init__(self, hub: _StreamHub, owner: str) -> None:
        super().__init__(owner, None)  # the hub's stream is already the upload's or the owner's
        self.hub = hub

    async def close(self) -> None:
        await self.hub.leave(self)
