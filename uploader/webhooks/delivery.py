"""Webhook deliveries: ``upload.received``, ``upload.ready`` and ``upload.failed`` POSTed,
signed, and retried with backoff until the receiver answers 2xx."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from uploader.events.bus import Event, EventBus, Subscription
from uploader.kit.logging import get_logger
from uploader.settings import Settings

if TYPE_CHECKING:  # the HTTP client is imported only where webhooks are configured
    import httpx

from uploader.webhooks.signing import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    signature,
)

log = get_logger(__name__)

WEBHOOK_EVENTS = frozenset({"upload.received", "upload.ready", "upload.failed"})
MAX_BACKOFF = 300.0


class DeliveryFailed(Exception):
    """The receiver did not take the delivery; worth trying again later."""


def payload_of(event: Event) -> dict[str, Any]:
    return {
        "id": str(event.id),  # the event id: receivers can drop a delivery they already have
        "type": event.type,
        "created_at": datetime.now(UTC).isoformat(),
        "upload_id": event.upload_id,
        "owner": event.owner,
        "data": event.data,
    }


def backoff(attempt: int) -> float:
    return float(min(MAX_BACKOFF, 2**attempt))


async def deliver(
    settings: Settings, payload: dict[str, Any], client: httpx.AsyncClient | None = None
) -> None:
    """POST one signed delivery (a fresh timestamp on every attempt); raise ``DeliveryFailed``."""
    if not settings.webhook_url or not settings.webhook_secret:
        raise DeliveryFailed("webhooks are not configured")
    body = json.dumps(payload, separators=(",", ":")).encode()
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "uploader-webhooks",
        EVENT_HEADER: str(payload["type"]),
        DELIVERY_HEADER: str(payload["id"]),
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(settings.webhook_secret, timestamp, body),
    }
    import httpx

    own_client = client is None
    http = client or httpx.AsyncClient(timeout=settings.webhook_timeout_seconds)
    try:
        response = await http.post(settings.webhook_url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from exc
    finally:
        if own_client:
            await http.aclose()
    if not 200 <= response.status_code < 300:
        raise DeliveryFailed(f"receiver answered {response.status_code}")
    log.info("webhook.delivered", type=payload["type"], upload_id=payload["upload_id"])


class WebhookDispatcher(Protocol):
    async def dispatch(self, payload: dict[str, Any]) -> None: ...

    async def close(self) -> None: ...


class EmbeddedWebhooks:
    """Deliveries as asyncio tasks of the API process, with their own retry loop."""

    def __init__(self, settings: Settings) -> None:
        import httpx

        self.settings = settings
        self._client = httpx.AsyncClient(timeout=settings.webhook_timeout_seconds)
        self._tasks: set[asyncio.Task[None]] = set()

    async def dispatch(self, payload: dict[str, Any]) -> None:
        task = asyncio.create_task(self._deliver(payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, payload: dict[str, Any]) -> None:
        for attempt in range(self.settings.webhook_max_attempts):
            try:
                await deliver(self.settings, payload, self._client)
                return
            except DeliveryFailed as exc:
                log.warning("webhook.retry", type=payload["type"], attempt=attempt + 1, error=str(exc))
                await asyncio.sleep(backoff(attempt))
        log.error("webhook.abandoned", type=payload["type"], upload_id=payload["upload_id"])

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._client.aclose()


class WebhookingEventBus:
    """An event bus that also hands the webhook events to a dispatcher."""

    def __init__(self, inner: EventBus, dispatcher: WebhookDispatcher) -> None:
        self.inner = inner
        self.dispatcher = dispatcher

    async def publish(self, owner: str, upload_id: str, type: str, data: dict[str, Any]) -> Event:
        event = await self.inner.publish(owner, upload_id, type, data)
        if type in WEBHOOK_EVENTS:
            await self.dispatcher.dispatch(payload_of(event))
        return event

    async def history(
        self, owner: str, upload_id: str | None, after: int | None, limit: int | None = None
    ) -> list[Event]:
        return await self.inner.history(owner, upload_id, after, limit)

    async def forget(self, owner: str, upload_id: str) -> None:
        await self.inner.forget(owner, upload_id)

    async def subscribe(self, owner: str, upload_id: str | None) -> Subscription:
        return await self.inner.subscribe(owner, upload_id)

    async def close(self) -> None:
        await self.dispatcher.close()
        await self.inner.close()
