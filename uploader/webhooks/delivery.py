"""Webhook deliveries from the outbox: ``upload.received``, ``upload.ready`` and
``upload.failed`` POSTed, signed, and retried with backoff until the receiver answers
2xx or the attempts run out (the event is then dead-lettered). Redirects are not
followed, and a receiver at a link-local (cloud metadata) address is refused unless
``UPLOADER_WEBHOOK_ALLOW_PRIVATE``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import partial
from typing import Any

from uploader.db.engine import Database
from uploader.db.models import utcnow
from uploader.events.bus import Event, EventBus, Subscription
from uploader.kit.errors import DependencyUnavailable
from uploader.kit.logging import get_logger
from uploader.observability import metrics
from uploader.observability.request_ids import REQUEST_ID_HEADER
from uploader.settings import Settings
from uploader.webhooks import outbox
from uploader.webhooks.addresses import refused_address
from uploader.webhooks.http_client import ReceiverError, WebhookClient
from uploader.webhooks.signing import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    signature,
)

log = get_logger(__name__)

MAX_BACKOFF = 3600.0
COALESCE_SECONDS = 0.02  # after a wake-up, how long to gather more events into the batch


class DeliveryFailed(Exception):
    """The receiver did not take the delivery; worth trying again later."""


async def deliver(settings: Settings, delivery: outbox.Claimed, client: WebhookClient) -> None:
    """POST one signed delivery (a fresh timestamp on every attempt); raise ``DeliveryFailed``.
    It carries the id of the request that caused the event (ours, checked when accepted) and,
    when that request was traced, its ``traceparent``."""
    if not settings.webhook_url or not settings.webhook_secret:
        raise DeliveryFailed("webhooks are not configured")
    body = delivery.body.encode()
    timestamp = int(time.time())
    # Rendered at once: ids and types are ours (hex and dotted names), never a client's.
    headers = (
        "Content-Type: application/json\r\nUser-Agent: uploader-webhooks\r\n"
        f"{EVENT_HEADER}: {delivery.type}\r\n{DELIVERY_HEADER}: {delivery.id}\r\n"
        f"{TIMESTAMP_HEADER}: {timestamp}\r\n"
        f"{SIGNATURE_HEADER}: {signature(settings.webhook_secret, timestamp, body)}\r\n"
        + (f"{REQUEST_ID_HEADER}: {delivery.request_id}\r\n" if delivery.request_id else "")
        + (f"traceparent: {delivery.traceparent}\r\n" if delivery.traceparent else "")
    ).encode()
    if not settings.webhook_allow_private:
        refused = await refused_address(settings.webhook_url)
        if refused:
            raise DeliveryFailed(refused)
    try:
        status = await client.post(body, headers, settings.webhook_timeout_seconds)
    except TimeoutError:
        raise DeliveryFailed(f"no answer within {settings.webhook_timeout_seconds:g} s") from None
    except ReceiverError as exc:
        raise DeliveryFailed(str(exc)) from None
    if not 200 <= status < 300:
        raise DeliveryFailed(f"receiver answered {status}")
    log.debug("webhook.delivered", delivery=delivery.id, type=delivery.type, upload_id=delivery.upload_id)


_DELIVERED, _FAILED, _DEAD = (metrics.WEBHOOK_DELIVERIES.labels(o) for o in ("delivered", "failed", "dead"))


class OutboxDispatcher:
    """Delivers the outbox's due events: a loop in the API process in the embedded
    default (``run``), and ``drain`` in a Celery task in the full stack. Any number of
    dispatchers, in any processes, can drain at once: each claims different rows."""

    def __init__(self, settings: Settings, db: Database, batch: int = 50) -> None:
        self.settings = settings
        self.db = db
        self.batch = batch
        self._client: WebhookClient | None = None
        self._wake = asyncio.Event()
        self._last_prune = 0.0
        self._stopping = False

    def wake(self) -> None:
        """An event was just committed: deliver now rather than at the next poll."""
        self._wake.set()

    def _backoff(self, attempts: int) -> float:
        return float(min(MAX_BACKOFF, self.settings.webhook_backoff_seconds * 2 ** (attempts - 1)))

    async def drain(self) -> int:
        """Deliver what is due until nothing is; returns how many were delivered."""
        if self._client is None:
            assert self.settings.webhook_url is not None
            self._client = WebhookClient(self.settings.webhook_url)
        lease = self.settings.webhook_timeout_seconds + 30
        delivered = 0
        more = True
        while more and not self._stopping:
            # ``more``: a full batch was due, so more may be; otherwise later events come
            # with the next wake-up or poll, without a claim that finds nothing.
            claimed, more = await self.db.run(lambda s: outbox.claim(s, self.batch, lease))
            if not claimed:
                return delivered
            by_upload: dict[str, list[outbox.Claimed]] = {}
            for delivery in claimed:  # in order: each upload's events one after the other
                by_upload.setdefault(delivery.upload_id, []).append(delivery)
            results = await asyncio.gather(*(self._in_order(events) for events in by_upload.values()))
            outcomes = [outcome for result in results for outcome in result]
            await self.db.run(
                partial(
                    outbox.settle,
                    outcomes=outcomes,
                    max_attempts=self.settings.webhook_max_attempts,
                    backoff=self._backoff,
                )
            )
            delivered += sum(error is None for _, error in outcomes)
        return delivered

    async def _in_order(self, events: list[outbox.Claimed]) -> list[tuple[outbox.Claimed, str | None]]:
        """One upload's events, one after the other; after a failure the rest wait."""
        outcomes: list[tuple[outbox.Claimed, str | None]] = []
        for delivery in events:
            failed = outcomes and outcomes[-1][1] is not None
            outcomes.append((delivery, outbox.SKIPPED if failed else await self._attempt(delivery)))
        return outcomes

    async def _attempt(self, delivery: outbox.Claimed) -> str | None:
        assert self._client is not None
        started = time.perf_counter()
        try:
            await deliver(self.settings, delivery, self._client)
        except DeliveryFailed as exc:
            attempt = delivery.attempts + 1
            dead = attempt >= self.settings.webhook_max_attempts
            (_DEAD if dead else _FAILED).inc()
            (log.error if dead else log.warning)(
                "webhook.dead" if dead else "webhook.retry",
                delivery=delivery.id,
                type=delivery.type,
                upload_id=delivery.upload_id,
                attempt=attempt,
                error=str(exc),
            )
            return str(exc)
        finally:
            metrics.WEBHOOK_DURATION.observe(time.perf_counter() - started)
        _DELIVERED.inc()
        return None

    async def prune(self) -> int:
        """Delivered rows older than the retention go."""
        before = utcnow() - timedelta(days=self.settings.webhook_retention_days)
        return await self.db.run(lambda s: outbox.prune_delivered(s, before))

    async def run(self) -> None:
        """Deliver, then wait for a wake-up or the poll interval; until ``stop``."""
        while not self._stopping:
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
                # Woken by a commit: others follow under load, and go out in one batch.
                await asyncio.sleep(COALESCE_SECONDS)
            self._wake.clear()

    async def stop(self, running: asyncio.Task[None]) -> None:
        """End ``run`` (the task ``running``) once the batch in flight is delivered and
        recorded: events a receiver already took are not sent again at the next start. A
        batch still out after a delivery's timeout is cancelled (its events go again once
        their lease ends)."""
        self._stopping = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(running), self.settings.webhook_timeout_seconds + 5)
        except TimeoutError:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()


class WebhookingEventBus:
    """An event bus that also wakes the outbox's dispatcher when a webhook event was
    published (it was committed to the outbox just before: the wake-up only saves the
    wait for the next poll)."""

    def __init__(self, inner: EventBus, wake: Callable[[], Awaitable[None]]) -> None:
        self.inner = inner
        self.wake = wake

    async def publish(self, owner: str, upload_id: str, type: str, data: dict[str, Any]) -> Event:
        try:
            return await self.inner.publish(owner, upload_id, type, data)
        finally:  # the outbox row is committed whether or not the live event went out
            if type in outbox.WEBHOOK_EVENTS:
                await self.wake()

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
