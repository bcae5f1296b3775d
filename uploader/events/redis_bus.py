"""Event bus on Redis Streams, shared by every API process and worker of a deployment.

Each event is added to two streams, its upload's and its owner's, under one id from a
Redis counter, so ids are ordered across processes and ``Last-Event-ID`` works whichever
API process a client reconnects to.
"""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis

from uploader.events.bus import Event

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
    )


class RedisEventBus:
    def __init__(
        self,
        url: str,
        prefix: str = "uploader:events",
        per_upload: int = 1000,
        per_owner: int = 10_000,
        upload_ttl_seconds: int = 7 * 24 * 3600,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.per_upload = per_upload
        self.per_owner = per_owner
        self.upload_ttl_seconds = upload_ttl_seconds
        self.redis: Redis = Redis.from_url(url)
        self._publish = self.redis.register_script(_PUBLISH)

    def _stream(self, owner: str, upload_id: str | None) -> str:
        return f"{self.prefix}:upload:{upload_id}" if upload_id else f"{self.prefix}:owner:{owner}"

    async def publish(self, owner: str, upload_id: str, type: str, data: dict[str, Any]) -> Event:
        body = json.dumps({"type": type, "upload_id": upload_id, "owner": owner, "data": data})
        keys = [f"{self.prefix}:seq", self._stream(owner, upload_id), self._stream(owner, None)]
        args: list[str | int] = [body, self.per_upload, self.per_owner, self.upload_ttl_seconds]
        event_id = await self._publish(keys=keys, args=args)
        return Event(id=int(event_id), type=type, upload_id=upload_id, owner=owner, data=data)

    async def history(self, owner: str, upload_id: str | None, after: int | None) -> list[Event]:
        entries: Any = await self.redis.xrange(self._stream(owner, upload_id))
        events = (_decode(fields) for _, fields in entries)
        return [e for e in events if e.owner == owner and (after is None or e.id > after)]

    async def subscribe(self, owner: str, upload_id: str | None) -> RedisSubscription:
        stream = self._stream(owner, upload_id)
        newest: Any = await self.redis.xrevrange(stream, count=1)
        position = newest[0][0] if newest else b"0-0"
        # A connection of its own: a blocking read must not hold one the others need.
        return RedisSubscription(Redis.from_url(self.url), stream, position, owner)

    async def close(self) -> None:
        await self.redis.aclose()


class RedisSubscription:
    def __init__(self, redis: Redis, stream: str, position: bytes, owner: str) -> None:
        self.redis = redis
        self.stream = stream
        self.position = position
        self.owner = owner
        self.pending: list[Event] = []

    async def next(self, wait_seconds: float) -> Event | None:
        while not self.pending:
            block = max(1, int(wait_seconds * 1000))
            reply: Any = await self.redis.xread({self.stream: self.position}, block=block)
            if not reply:
                return None
            for entry_id, fields in reply[0][1]:
                self.position = entry_id
                event = _decode(fields)
                if event.owner == self.owner:
                    self.pending.append(event)
        return self.pending.pop(0)

    async def close(self) -> None:
        await self.redis.aclose()
