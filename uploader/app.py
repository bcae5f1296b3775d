"""The FastAPI application: wiring of settings, database, storage, locks and routers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

from uploader import __version__, openapi
from uploader.auth.dependencies import Authenticator
from uploader.direct.router import router as direct_router
from uploader.direct.service import DirectUploads, settle_pending_loop
from uploader.downloads.router import router as downloads_router
from uploader.events.router import router as events_router
from uploader.health.router import router as health_router
from uploader.kit.errors import install_error_handlers
from uploader.kit.logging import get_logger
from uploader.kit.method_override import MethodOverrideMiddleware
from uploader.kit.tasks import cancel_until_done
from uploader.observability import tracing
from uploader.observability.middleware import RequestTelemetry
from uploader.observability.request_ids import REQUEST_ID_HEADER
from uploader.observability.router import ScrapedValues
from uploader.observability.router import router as metrics_router
from uploader.protocols.form import router as forms_router
from uploader.protocols.tus import build_tus_router
from uploader.protocols.tus_fast_path import TusFastPath
from uploader.quotas.rate import ClientRateLimit, RateLimits
from uploader.quotas.router import router as usage_router
from uploader.renders.router import router as renders_router
from uploader.runtime import Runtime
from uploader.settings import Settings
from uploader.uploads.router import router as uploads_router
from uploader.uploads.service import UploadService
from uploader.web.router import router as web_router
from uploader.web.router import static_files
from uploader.webhooks.router import router as webhooks_router

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
    "Upload-Complete",
    "Upload-Draft-Interop-Version",
    "Upload-Limit",
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
    "Content-Disposition",
    REQUEST_ID_HEADER,
]
EXPOSED_HEADERS = [
    *TUS_HEADERS,
    "ETag",
    "Content-Range",
    "Content-Disposition",
    "Content-Length",
    "Accept-Patch",
    "Retry-After",
    "RateLimit",
    "RateLimit-Policy",
    REQUEST_ID_HEADER,
]


class UploaderApp(FastAPI):
    """The application, with request ids, request metrics and the request's span around
    everything, even the server error handler's 500s."""

    def build_middleware_stack(self) -> ASGIApp:
        return RequestTelemetry(super().build_middleware_stack(), count=self.state.settings.metrics)


async def _cleanup_loop(service: UploadService, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            removed = await service.expire_due()
            pruned = await service.prune_tombstones()
            orphans = await service.sweep_orphans()
            if removed or pruned or orphans:
                log.info("cleanup.done", expired=removed, pruned=pruned, orphans=orphans)
        except Exception:
            log.exception("cleanup.failed")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    tracing.configure("api")  # before any database engine is made
    rates = RateLimits(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await Runtime.start(settings, rates=rates)
        service = runtime.service
        app.state.auth = Authenticator(settings, runtime.db)
        app.state.db = runtime.db
        app.state.uploads = service
        app.state.runtime = runtime
        direct = app.state.direct = DirectUploads(service, runtime.direct_s3)
        settling = (
            asyncio.create_task(settle_pending_loop(direct, settings.s3_direct_poll_seconds))
            if runtime.direct_s3 is not None
            else None
        )
        if runtime.processor is not None:
            await runtime.processor.resume_pending()
        # With Celery, beat sweeps; the embedded default sweeps here.
        cleanup = (
            asyncio.create_task(_cleanup_loop(service, settings.cleanup_interval_seconds))
            if settings.processing != "celery"
            else None
        )
        log.info(
            "server.started",
            version=__version__,
            storage=settings.resolved_storage_url,
            processing=settings.processing,
        )
        try:
            yield
        finally:
            service.locker.interrupt_all()
            for task in (cleanup, settling):
                if task is not None:
                    # Again until it ends: a cancellation the Redis client drops (a lock
                    # taken by the sweep) sent the loop back to its sleep, and the
                    # shutdown with it.
                    await cancel_until_done(task)
            await runtime.close()
            tracing.flush()

    app = UploaderApp(
        title="uploader",
        version=__version__,
        description="Resumable uploads (tus 1.0) with streaming storage, status and downloads.",
        lifespan=lifespan,
        generate_unique_id_function=lambda route: route.name,
        # Tracing is ours (observability/tracing.py): FastAPI's own would look for
        # providers on every request, and could not name the tus fast path's spans.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.tus_path = settings.tus_path
    app.state.scraped = ScrapedValues()
    install_error_handlers(app)
    openapi.install(app, settings.tus_path)
    tus_router = build_tus_router(settings.tus_path)
    app.include_router(tus_router)
    app.include_router(uploads_router)
    app.include_router(forms_router)
    app.include_router(direct_router)
    app.include_router(downloads_router)
    app.include_router(renders_router)
    app.include_router(events_router)
    app.include_router(usage_router)
    app.include_router(webhooks_router)
    app.include_router(health_router)
    app.include_router(metrics_router)
    app.include_router(web_router)
    app.mount("/static", static_files(), name="static")
    # Innermost: the tus requests it serves still pass CORS and the method override.
    app.add_middleware(
        TusFastPath,
        router=tus_router,
        tus_path=settings.tus_path,
        exception_handlers=app.exception_handlers,
    )
    if rates.per_ip is not None:  # inside CORS: a browser can read its 429
        app.add_middleware(ClientRateLimit, rates=rates)
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
