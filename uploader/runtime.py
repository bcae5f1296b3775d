"""Everything a process of ours holds for its lifetime, built once from the settings.

The API (in its lifespan) and a Celery worker process build the same parts: database,
store, event bus (with webhooks), locks, the upload service and the pipeline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from uploader.db.engine import Database
from uploader.events.bus import EventBus, LocalEventBus
from uploader.processing.base import Processor
from uploader.processing.embedded import EmbeddedProcessor
from uploader.processing.pipeline import Pipeline
from uploader.quotas.admission import Admission
from uploader.quotas.rate import RateLimits
from uploader.settings import Settings
from uploader.storage.base import UploadStore
from uploader.storage.registry import build_store
from uploader.uploads.locks import LocalLocker, UploadLocker
from uploader.uploads.service import UploadService
from uploader.webhooks.delivery import OutboxDispatcher, WebhookingEventBus

if TYPE_CHECKING:
    from uploader.kit.resp import LeanRedis
    from uploader.processing.task_messages import TaskSender
    from uploader.storage.s3_direct import DirectS3


@dataclass
class Runtime:
    settings: Settings
    db: Database
    store: UploadStore
    events: EventBus
    locker: UploadLocker
    pipeline: Pipeline
    service: UploadService
    processor: Processor | None
    webhooks: OutboxDispatcher | None = None  # delivers the outbox (webhooks configured)
    webhook_loop: asyncio.Task[None] | None = None  # the embedded default's dispatcher
    direct_s3: DirectS3 | None = None  # direct uploads' signing, on S3 in an API process
    task_sender: TaskSender | None = None  # the full stack's Celery messages
    lean_redis: LeanRedis | None = None  # the hot commands of the locks, events and tasks, on one connection

    @classmethod
    async def start(
        cls, settings: Settings, *, serves_requests: bool = True, rates: RateLimits | None = None
    ) -> Runtime:
        """``serves_requests``: the API process (it may run the pipeline itself); a worker
        process only runs what its tasks ask for."""
        queued_processor: Processor | None = None
        wake_queued: Callable[[], Awaitable[None]] | None = None
        sender = None
        lean = None
        if settings.redis_url:  # the Redis client is imported only where it is used
            from uploader.kit.resp import lean_client

            lean = lean_client(settings.redis_url)
        if settings.processing == "celery":  # Celery is imported only where it is used
            from uploader.processing.queued import QueuedProcessor, queued_drain
            from uploader.processing.task_messages import TaskSender

            sender = TaskSender(settings, lean)
            queued_processor = QueuedProcessor(sender)
            wake_queued = queued_drain(sender)
        db = Database(settings.resolved_database_url, settings.database_pool_size)
        store = build_store(settings)
        await store.start()
        events: EventBus
        locker: UploadLocker
        if settings.redis_url:  # the Redis client is imported only where it is used
            from uploader.events.redis_bus import RedisEventBus
            from uploader.uploads.redis_locks import RedisLocker

            events = RedisEventBus(settings.redis_url, prefix=f"{settings.redis_prefix}:events", lean=lean)
            locker = RedisLocker(
                settings.redis_url,
                settings.redis_prefix,
                settings.lock_timeout_seconds,
                settings.lock_lease_seconds,
                lean,
            )
        else:
            events, locker = LocalEventBus(), LocalLocker(settings.lock_timeout_seconds)
        webhooks = OutboxDispatcher(settings, db) if settings.webhook_url else None
        webhook_loop = None
        if webhooks is not None and settings.webhook_dispatcher == "auto":
            if wake_queued is not None:  # the full stack: a Celery task delivers
                events = WebhookingEventBus(events, wake_queued)
            else:
                events = WebhookingEventBus(events, _waker(webhooks))
                if serves_requests:
                    webhook_loop = asyncio.create_task(webhooks.run())
        # "process": `uploader webhooks deliver` delivers; this process only writes the outbox.
        await locker.start()
        pipeline = Pipeline(settings, db, store, events)
        processor: Processor | None = None
        if serves_requests:  # a worker process runs what its tasks ask for, nothing more
            embedded = settings.processing == "embedded"
            processor = EmbeddedProcessor(settings, db, pipeline) if embedded else queued_processor
        admission = Admission(settings, rates or RateLimits(settings))
        hooks = None
        if settings.hook_url and serves_requests:  # only requests are hooked
            from uploader.hooks.http import HttpHooks

            hooks = HttpHooks(settings, admission.rates.client_address)
        service = UploadService(
            settings, db, store, locker, processor=processor, events=events, admission=admission, hooks=hooks
        )
        direct_s3 = None
        if serves_requests and urlsplit(settings.resolved_storage_url).scheme == "s3":
            from uploader.storage.s3 import S3Store
            from uploader.storage.s3_direct import DirectS3

            assert isinstance(store, S3Store)
            direct_s3 = DirectS3(store, settings.s3_public_endpoint_url, settings.s3_direct_sign_seconds)
            await direct_s3.start()
        return cls(
            settings,
            db,
            store,
            events,
            locker,
            pipeline,
            service,
            processor,
            webhooks,
            webhook_loop,
            direct_s3,
            sender,
            lean,
        )

    async def close(self) -> None:
        self.locker.interrupt_all()
        if self.webhooks is not None and self.webhook_loop is not None:
            await self.webhooks.stop(self.webhook_loop)
        if self.webhooks is not None:
            await self.webhooks.close()
        if self.service.hooks is not None:
            await self.service.hooks.close()
        if self.processor is not None:
            await self.processor.close()
        if self.direct_s3 is not None:
            await self.direct_s3.close()
        if self.task_sender is not None:
            await self.task_sender.close()
        await self.store.close()
        await self.events.close()
        await self.locker.close()
        if self.lean_redis is not None:
            await self.lean_redis.close()
        await self.db.dispose()


def _waker(dispatcher: OutboxDispatcher) -> Callable[[], Awaitable[None]]:
    async def wake() -> None:
        dispatcher.wake()

    return wake
