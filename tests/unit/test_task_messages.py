"""The Celery messages the API pushes itself are the ones Celery's own ``send_task`` stores
through kombu's Redis transport: the same list, the same shape, the same task and body.
(A real worker consuming them is the full-stack tests' business.)"""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

import redis

from uploader.processing.celery_app import PROCESS_TASK, build_celery
from uploader.processing.task_messages import TaskSender
from uploader.settings import Settings

# Fresh for every message: ids, and what names the sending process.
PER_MESSAGE = {"id", "root_id", "origin"}
PER_MESSAGE_PROPERTIES = {"correlation_id", "reply_to", "delivery_tag"}


async def test_a_pushed_message_is_what_celery_would_have_sent(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url, redis_prefix=f"test-{secrets.token_hex(4)}", processing="celery")
    headers = {"uploader_request_id": "req-1"}
    app = build_celery(settings)
    app.send_task(PROCESS_TASK, args=["0" * 32], queue=settings.task_queue, headers=headers)
    sender = TaskSender(settings)
    client = redis.Redis.from_url(redis_url)
    try:
        keys = [key.decode() for key in client.keys(f"{settings.redis_prefix}:celery:*")]
        queued = [key for key in keys if client.type(key) == b"list"]
        assert queued == [sender.key]
        (celerys,) = [json.loads(raw) for raw in client.lrange(sender.key, 0, -1)]
        client.delete(sender.key)
        await sender.send(PROCESS_TASK, ["0" * 32], headers)
        (ours,) = [json.loads(raw) for raw in client.lrange(sender.key, 0, -1)]
    finally:
        for key in client.keys(f"{settings.redis_prefix}:*"):
            client.delete(key)
        await sender.close()
        app.close()
    assert ours.keys() == celerys.keys()
    assert _body(ours) == _body(celerys) == [["0" * 32], {}, _embed()]
    assert _without(ours["headers"], PER_MESSAGE) == _without(celerys["headers"], PER_MESSAGE)
    assert ours["headers"]["root_id"] == ours["headers"]["id"] == ours["properties"]["correlation_id"]
    assert ours["headers"]["origin"].split("@")[0].startswith("gen")
    properties = _without(ours["properties"], PER_MESSAGE_PROPERTIES)
    assert properties == _without(celerys["properties"], PER_MESSAGE_PROPERTIES)
    assert {k: v for k, v in ours.items() if k not in ("body", "headers", "properties")} == {
        k: v for k, v in celerys.items() if k not in ("body", "headers", "properties")
    }


def _body(message: dict[str, Any]) -> Any:
    return json.loads(base64.b64decode(message["body"]))


def _embed() -> dict[str, None]:
    return {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def _without(values: dict[str, Any], names: set[str]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k not in names}
