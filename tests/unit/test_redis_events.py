"""A Redis event bus that cannot reach Redis fails in a way the pipeline retries."""

from __future__ import annotations

import pytest

from tests.support import free_port
from uploader.events.bus import EventsUnavailable
from uploader.events.redis_bus import RedisEventBus
from uploader.processing.pipeline import TRANSIENT_ERRORS


async def test_publishing_without_redis_is_a_transient_failure() -> None:
    bus = RedisEventBus(f"redis://127.0.0.1:{free_port()}/0", prefix="nowhere")
    try:
        with pytest.raises(EventsUnavailable) as raised:
            await bus.publish("anonymous", "u1", "upload.processing", {})
    finally:
        await bus.close()
    assert isinstance(raised.value, TRANSIENT_ERRORS)
