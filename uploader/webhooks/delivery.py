"""Webhook deliveries from the outbox: ``upload.received``, ``upload.ready`` and
``upload.failed`` POSTed, signed, and retried with backoff until the receiver answers
2xx or the attempts run out (the event is then dead-lettered). Redirects are not
followed, and a receiver at a link-local (cloud metadata) address is refused unless
``UPLOADER_WEBHOOK_ALLOW_PRIVATE``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from uploader.db.engine import Database
from uploader.db.models import utcnow
from uploader.events.bus import Event, EventBus, Subscription
from uploader.kit.errors import DependencyUnavailable
from uploader.kit.logging import get_logger
from uploader.settings import Settings
from uploader.webhooks import outbox
from uploader.webhooks.addresses import refused_address

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

MAX_BACKOFF = 3600.0


class DeliveryFailed(Exception):
    """The receiver did not take the delivery; worth trying again later."""


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

    if not settings.webhook_allow_private:
        refused = await refused_address(settings.webhook_url)
        if refused:
            raise DeliveryFailed(refused)
    own_client = client is None
    http = client or httpx.AsyncClient(timeout=settings.webhook_timeout_seconds, follow_redirects=False)
    try:
        response = await http.post(settings.webhook_url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from exc
    finally:
        if own_client:
            await http.aclose()
    if not 200 <= response.status_code < 300:
        raise DeliveryFailed(f"receiver answered {response.status_code}")
    log.info(
        "webhook.delivered", delivery=payload["id"], type=payload["type"], upload_id=payload["upload_id"]
    )


class OutboxDispatcher:
    """Delivers the outbox's due events: a loop in the API process in the embedded
    default (``run``), and ``drain`` in a Celery task in the full stack. Any number of
    dispatchers, in any processes, can drain at once: each claims different rows."""

    def __init__(self, settings: Settings, db: Database, batch: int = 50) -> None:
        self.settings = settings
        self.db = db
        self.batch = batch
        self._client: httpx.AsyncClient | None = None
        self._wake = asyncio.Event()
        self._last_prune = 0.0

    def wake(self) -> None:
        """An event was just committed: deliver now rather than at the next poll."""
        self._wake.set()

    def _backoff(self, attempts: int) -> float:
        return float(min(MAX_BACKOFF, self.settings.webhook_backoff_seconds * 2 ** (attempts - 1)))

    async def drain(self) -> int:
        """Deliver what is due until nothing is; returns how many were delivered."""
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.settings.webhook_timeout_seconds, follow_redirects=False
            )
        lease = self.settings.webhook_timeout_seconds + 30
        delivered = 0
        while True:
            claimed = await self.db.run(lambda s: outbox.claim(s, self.batch, lease))
            if not claimed:
                return delivered
            errors = await asyncio.gather(*(self._attempt(d) for d in claimed))
            outcomes = list(zip(claimed, errors, strict=True))
            await self.db.run(
                partial(
                    outbox.settle,
                    outcomes=outcomes,
                    max_attempts=self.settings.webhook_max_attempts,
                    backoff=self._backoff,
                )
            )
            delivered += errors.count(None)

    async def _attempt(self, delivery: outbox.Delivery) -> str | None:
        assert self._client is not None
        try:
            await deliver(self.settings, delivery.payload(), self._client)
        except DeliveryFailed as exc:
            dead = delivery.attempts >= self.settings.webhook_max_attempts
            (log.error if dead else log.warning)(
                "webhook.dead" if dead else "webhook.retry",
                delivery=delivery.id,
                type=delivery.type,
                upload_id=delivery.upload_id,
                attempt=delivery.attempts,
                error=str(exc),
            )
            return str(exc)
        return None

    async def prune(self) -> int:
        """Delivered rows older than the retention go."""
        before = utcnow() - timedelta(days=self.settings.webhook_retention_days)
        return await self.db.run(lambda s: outbox.prune_delivered(s, before))

    async def run(self) -> None:
        """Deliver, then wait for a wake-up or the poll interval; forever."""
        while True:
            try:
                await self.drain()
                if time.monotonic() - self._last_prune > self.settings.cleanup_interval_seconds:
                    self._last_prune = time.monotonic()
                    await self.prune()
            except DependencyUnavailable as exc:
                log.warning("webhook.outbox_unavailable", error=exc.detail)
            except Exception:
                log.exception("webhook.dispatch_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.webhook_poll_seconds)
            self._wake.clear()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


class WebhookingEventBus:
    """An event bus that also wakes the outbox's dispatcher when a webhook event was
    published (it was committed to the outbox just before: the wake-up only saves the
    wait for the next poll)."""

    def __init__(self, inner: EventBus, wake: Callable[[], Awaitable[None]]) -> None:
        self.inner = inner
        self.wake = wake

    async def publish(self, owner: str, upload_id: str, type: str, data: dict[str, Any]) -> Event:
        event = await self.inner.publish(owner, upload_id, type, data)
        if type in outbox.WEBHOOK_EVENTS:
            await self.wake()
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
        await self.inner.close()
