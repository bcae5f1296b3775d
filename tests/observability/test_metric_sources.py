"""What only we count: storage operations, processing steps, locks, live streams, hooks
and webhooks, each moved by a request that exercises it."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import httpx
import pytest

from tests.api.helpers import create, patch, settled_status, upload_bytes, upload_id
from tests.hooks.conftest import serving_hooks
from tests.images import jpeg
from tests.observability.metrics import scrape
from tests.support import TUS, WebhookReceiver, in_process_client, metadata, redis_env
from uploader.observability.router import ScrapedValues
from uploader.settings import Settings


async def test_storage_operations_are_timed_by_backend_and_operation(
    app_client: httpx.AsyncClient, backend: tuple[str, str]
) -> None:
    storage = backend[1]
    data = os.urandom(200_000)
    before = await scrape(app_client)
    path = await upload_bytes(app_client, data, chunk=100_000)
    await settled_status(app_client, upload_id(path))
    assert (await app_client.delete(path, headers=TUS)).status_code == 204
    after = await scrape(app_client)

    def operations(operation: str) -> float:
        return after.delta(
            before, "uploader_storage_operation_duration_seconds_count", backend=storage, operation=operation
        )

    assert operations("create") == (1 if storage == "s3" else 0)  # a local file begins with its first write
    assert operations("write") == 2
    assert operations("finish") == 1
    assert operations("terminate") == 1
    if storage == "s3":  # and every call the S3 client made, by API operation
        assert after.delta(before, "uploader_s3_request_duration_seconds_count", operation="UploadPart") >= 1
        assert (
            after.delta(
                before, "uploader_s3_request_duration_seconds_count", operation="AbortMultipartUpload"
            )
            >= 0
        )


@pytest.mark.parametrize("backend", ["sqlite+local"], indirect=True)
async def test_processing_steps_are_timed_and_counted_by_outcome(app_client: httpx.AsyncClient) -> None:
    photo = jpeg(640, 480)
    before = await scrape(app_client)
    path = await upload_bytes(
        app_client,
        photo,
        chunk=len(photo),
        **{"Upload-Metadata": metadata(filename="p.jpg", filetype="image/jpeg")},
    )
    status = await settled_status(app_client, upload_id(path))
    assert status["state"] == "ready"
    after = await scrape(app_client)
    steps = status["processing"]["steps"]
    assert "variants" in steps
    for name, step in steps.items():
        assert (
            after.delta(before, "uploader_processing_steps_total", step=name, outcome=step["state"]) == 1
        ), name
        assert after.delta(before, "uploader_processing_step_duration_seconds_count", step=name) == 1, name


@pytest.mark.parametrize("backend", ["sqlite+local"], indirect=True)
async def test_a_request_that_finds_its_upload_locked_is_counted_as_a_wait_and_an_interrupt(
    app_client: httpx.AsyncClient,
) -> None:
    path = await create(app_client, 10_000_000)
    before = await scrape(app_client)
    gate = asyncio.Event()

    async def slow_body() -> Any:
        yield b"x" * 1000
        await gate.wait()
        yield b"y" * 1000

    first = asyncio.create_task(
        app_client.patch(
            path,
            content=slow_body(),
            headers={**TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"},
        )
    )
    await asyncio.sleep(0.2)
    assert (await app_client.get("/metrics")).status_code == 200
    during = await scrape(app_client)
    assert during.value("uploader_patches_in_flight") == 1
    # A second PATCH (a client resuming elsewhere) asks the writer to stop and waits for
    # its lock; the first records what it received.
    second = await patch(app_client, path, 1000, b"z" * 10)
    assert second.status_code == 204, second.text
    assert (await first).status_code == 204
    gate.set()
    after = await scrape(app_client)
    assert after.delta(before, "uploader_lock_waits_total") == 1
    assert after.delta(before, "uploader_lock_interrupts_total") == 1
    assert after.delta(before, "uploader_lock_wait_seconds_count") == 1
    assert after.value("uploader_patches_in_flight") == 0


@pytest.mark.parametrize("backend", ["sqlite+local"], indirect=True)
async def test_open_event_streams_are_counted(app_client: httpx.AsyncClient) -> None:
    before = await scrape(app_client)
    path = await create(app_client, 10)

    async def stream_until_cancelled() -> None:
        async with app_client.stream("GET", f"/api/v1/uploads/{upload_id(path)}/events") as response:
            async for _ in response.aiter_bytes():
                pass

    streams = [asyncio.create_task(stream_until_cancelled()) for _ in range(3)]
    await asyncio.sleep(0.3)
    during = await scrape(app_client)
    assert during.value("uploader_sse_clients") - before.value("uploader_sse_clients") == 3
    assert (await patch(app_client, path, 0, b"0123456789")).status_code == 204
    await settled_status(app_client, upload_id(path))
    for stream in streams:  # a finished upload's stream ends by itself
        await asyncio.wait_for(stream, 10)
    after = await scrape(app_client)
    assert after.value("uploader_sse_clients") == before.value("uploader_sse_clients")


@pytest.mark.parametrize("backend", ["sqlite+local"], indirect=True)
async def test_hook_calls_are_counted_by_event_and_outcome(settings: Settings) -> None:
    with serving_hooks() as hooks:
        hooked = settings.model_copy(
            update={"hook_url": hooks.url, "hook_secret": "hooksecret", "hook_timeout_seconds": 0.5}
        )
        async with in_process_client(hooked) as client:
            before = await scrape(client)
            accepted = await create(client, 3, **{"X-Request-ID": "hooked-1"})
            assert hooks.asked[-1].headers["X-Request-ID"] == "hooked-1"  # the hook sees the id
            hooks.answer("pre-create", body={"reject": {"status": 403, "message": "not today"}})
            refused = await client.post("/files/", headers={**TUS, "Upload-Length": "3"})
            assert refused.status_code == 403
            hooks.answer("pre-create", 500)
            broken = await client.post("/files/", headers={**TUS, "Upload-Length": "3"})
            assert broken.status_code == 503
            assert (await client.delete(accepted, headers=TUS)).status_code == 204
            after = await scrape(client)

    def calls(event: str, outcome: str) -> float:
        return after.delta(before, "uploader_hook_calls_total", event=event, outcome=outcome)

    assert calls("pre-create", "accepted") == 1
    assert calls("pre-create", "rejected") == 1
    assert calls("pre-create", "unavailable") == 1
    assert calls("pre-terminate", "accepted") == 1
    assert after.delta(before, "uploader_hook_duration_seconds_count", event="pre-create") == 3


@pytest.mark.parametrize("backend", ["sqlite+local"], indirect=True)
async def test_webhook_deliveries_are_counted_by_outcome_and_carry_the_request_id(settings: Settings) -> None:
    receiver = WebhookReceiver(failures=1)
    try:
        hooked = settings.model_copy(
            update={
                "webhook_url": receiver.url,
                "webhook_secret": "whsec",
                "webhook_backoff_seconds": 0.05,
                "webhook_poll_seconds": 0.05,
            }
        )
        async with in_process_client(hooked) as client:
            before = await scrape(client)
            path = await create(client, 4, **{"X-Request-ID": "made-here"})
            assert (
                await patch(client, path, 0, b"data", **{"X-Request-ID": "finished-here"})
            ).status_code == 204
            await settled_status(client, upload_id(path))
            async with asyncio.timeout(10):
                while len(receiver.received) < 2:  # noqa: ASYNC110 (the receiver is a thread)
                    await asyncio.sleep(0.05)
            client.app.state.scraped = ScrapedValues()  # type: ignore[attr-defined]  # read now, not in 5 s
            after = await scrape(client)
    finally:
        receiver.close()
    assert after.delta(before, "uploader_webhook_deliveries_total", outcome="failed") == 1
    assert after.delta(before, "uploader_webhook_deliveries_total", outcome="delivered") == 2
    assert after.delta(before, "uploader_webhook_delivery_duration_seconds_count") == 3
    assert after.value("uploader_webhook_outbox_events", status="delivered") == 2
    # Both events were caused by the request that sent the last byte.
    assert [headers["X-Request-ID"] for headers, _ in receiver.received] == ["finished-here"] * 2


@pytest.mark.parametrize("backend", ["postgres+local"], indirect=True)
async def test_the_celery_queue_depth_is_read_when_scraped(settings: Settings, redis_url: str) -> None:
    # No worker runs: what completed uploads send waits in the queue.
    for redis_settings in redis_env(redis_url):
        queued = settings.model_copy(
            update={
                "processing": "celery",
                "redis_url": redis_settings["UPLOADER_REDIS_URL"],
                "redis_prefix": redis_settings["UPLOADER_REDIS_PREFIX"],
                "inline_digest_max_bytes": 0,  # every upload goes to a worker
            }
        )
        async with in_process_client(queued) as client:
            for _ in range(3):
                await upload_bytes(client, os.urandom(2000), chunk=2000)
            scraped = await scrape(client)
        assert scraped.value("uploader_queue_depth", queue=queued.task_queue) == 3
