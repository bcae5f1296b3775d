"""The FastAPI application: wiring of settings, database, storage, locks and routers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from uploader import __version__
from uploader.db.engine import Database
from uploader.downloads.router import router as downloads_router
from uploader.events.bus import EventBus, LocalEventBus
from uploader.events.redis_bus import RedisEventBus
from uploader.events.router import router as events_router
from uploader.health.router import router as health_router
from uploader.kit.errors import install_error_handlers
from uploader.kit.logging import get_logger
from uploader.kit.method_override import MethodOverrideMiddleware
from uploader.processing.embedded import EmbeddedProcessor
from uploader.protocols.tus import build_tus_router
from uploader.settings import Settings
from uploader.storage.registry import build_store
from uploader.uploads.locks import LocalLocker, UploadLocker
from uploader.uploads.redis_locks import RedisLocker
from uploader.uploads.router import router as uploads_router
from uploader.uploads.service import UploadService

log = get_logger(__name__)

TUS_HEADERS = [
    "Tus-Resumable",
    "Tus-Version",
    "Tus-Extension",
    "Tus-Max-Size",
    "Tus-Checksum-Algorithm",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Defer-Length",
    "Upload-Metadata",
    "Upload-Concat",
    "Upload-Expires",
    "Upload-Checksum",
    "Location",
]
ALLOWED_HEADERS = [
    *TUS_HEADERS,
    "Authorization",
    "X-Api-Key",
    "Content-Type",
    "X-HTTP-Method-Override",
    "X-Requested-With",
    "Range",
    "If-None-Match",
    "If-Range",
    "Last-Event-ID",
]
EXPOSED_HEADERS = [*TUS_HEADERS, "ETag", "Content-Range", "Content-Disposition", "Content-Length"]


async def _cleanup_loop(service: UploadService, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            removed = await service.expire_due()
            if removed:
                log.info("cleanup.expired", removed=removed)
        except Exception:
            log.exception("cleanup.failed")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(settings.resolved_database_url)
        store = build_store(settings)
        await store.start()
        events: EventBus = (
            RedisEventBus(settings.redis_url, prefix=f"{settings.redis_prefix}:events")
            if settings.redis_url
            else LocalEventBus()
        )
        processor = EmbeddedProcessor(db, store, events) if settings.process_uploads else None
        locker: UploadLocker = (
            RedisLocker(settings.redis_url, settings.redis_prefix, settings.lock_timeout_seconds)
            if settings.redis_url
            else LocalLocker(settings.lock_timeout_seconds)
        )
        await locker.start()
        service = UploadService(
            settings,
            db,
            store,
            locker,
            processor=processor,
            events=events,
        )
        app.state.db = db
        app.state.uploads = service
        if processor is not None:
            await processor.resume_pending()
        cleanup = asyncio.create_task(_cleanup_loop(service, settings.cleanup_interval_seconds))
        log.info("server.started", version=__version__, storage=settings.resolved_storage_url)
        try:
            yield
        finally:
            service.locker.interrupt_all()
            cleanup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await cleanup
            if processor is not None:
                await processor.close()
            await store.close()
            await events.close()
            await service.locker.close()
            await db.dispose()

    app = FastAPI(
        title="uploader",
        version=__version__,
        description="Resumable uploads (tus 1.0) with streaming storage, status and downloads.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.tus_path = settings.tus_path
    install_error_handlers(app)
    app.include_router(build_tus_router(settings.tus_path))
    app.include_router(uploads_router)
    app.include_router(downloads_router)
    app.include_router(events_router)
    app.include_router(health_router)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=ALLOWED_HEADERS,
        expose_headers=EXPOSED_HEADERS,
        max_age=86400,
    )
    app.add_middleware(MethodOverrideMiddleware)
    return app
