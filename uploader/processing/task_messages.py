"""Celery task messages sent from the API's event loop, straight onto the queue's Redis
list: one ``LPUSH`` on the asyncio Redis client the process already has.

Celery's own ``send_task`` is a blocking call through kombu, so the API ran it in a
thread; under many small uploads that thread's hand-offs and kombu's work around the
one command cost a fifth of the process's throughput. The message is what kombu's Redis
transport stores for ``send_task`` (Celery's task protocol 2, JSON, the body in
base64), so workers, beat's sweep and ``celery inspect`` see nothing different. A
message that could not be pushed (Redis down) is not lost: the upload stays
``received`` and beat's sweep sends it again.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from typing import Any

from redis.asyncio import Redis

from uploader.kit.redis import redis_client
from uploader.kit.resp import HotPath, LeanRedis
from uploader.observability import tracing
from uploader.settings import Settings

# Protocol 2's third body element: no callbacks, errbacks, chain or chord.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


class TaskSender:
    def __init__(self, settings: Settings, lean: LeanRedis | None = None) -> None:
        assert settings.redis_url is not None
        self.redis: Redis = redis_client(settings.redis_url)
        self._hot = HotPath(self.redis, settings.redis_url, lean)
        self.queue = settings.task_queue
        # kombu's key of the queue's list: the transport's global prefix, then the queue
        # (a message of priority 0, the default, goes to the list without a suffix).
        self.key = f"{settings.redis_prefix}:celery:{settings.task_queue}"
        self.origin = f"gen{os.getpid()}@{socket.gethostname()}"
        self.reply_to = str(uuid.uuid4())  # results are ignored: never read

    def message(self, name: str, args: list[Any], headers: dict[str, str] | None = None) -> bytes:
        """The message kombu would store for ``send_task(name, args=args, headers=headers)``."""
        task_id = str(uuid.uuid4())
        body = json.dumps([args, {}, _EMBED]).encode()
        task_headers: dict[str, Any] = {
            "lang": "py",
            "task": name,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": repr(args),
            "kwargsrepr": "{}",
            "origin": self.origin,
            "ignore_result": None,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
            **(headers or {}),
        }
        traceparent = tracing.current_traceparent()
        if traceparent is not None:  # the task's spans join the request's trace
            task_headers["traceparent"] = traceparent
        message = {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": task_headers,
            "properties": {
                "correlation_id": task_id,
                "reply_to": self.reply_to,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": self.queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
        return json.dumps(message).encode()

    async def send(self, name: str, args: list[Any], headers: dict[str, str] | None = None) -> None:
        await self._hot.call(b"LPUSH", self.key, self.message(name, args, headers))

    async def close(self) -> None:
        await self._hot.close()
        await self.redis.aclose()
