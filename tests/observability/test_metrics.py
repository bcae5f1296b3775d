"""``/metrics``: counters move by exactly what a known sequence of requests adds."""

from __future__ import annotations

import os
import secrets
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from tests.api.helpers import create, patch, settled_status, upload_id
from tests.observability.metrics import scrape
from tests.support import TUS, in_process_client
from uploader.db.models import utcnow
from uploader.settings import Settings
from uploader.uploads import repository

RESOURCE = "/files/{upload_id}"


async def test_a_tus_upload_adds_its_requests_bytes_and_one_upload(app_client: httpx.AsyncClient) -> None:
    data = os.urandom(300_000)
    before = await scrape(app_client)
    path = await create(app_client, len(data))
    for start in (0, 100_000, 200_000):
        assert (await patch(app_client, path, start, data[start : start + 100_000])).status_code == 204
    assert (await app_client.head(path, headers=TUS)).status_code == 200
    assert (await app_client.head("/files/" + "0" * 32, headers=TUS)).status_code == 404
    await settled_status(app_client, upload_id(path))
    content = await app_client.get(path)
    assert content.content == data
    after = await scrape(app_client)

    def requests(method: str, route: str, status: str) -> float:
        return after.delta(before, "uploader_requests_total", method=method, route=route, status=status)

    assert requests("POST", "/files/", "201") == 1
    assert requests("PATCH", RESOURCE, "204") == 3
    assert requests("HEAD", RESOURCE, "200") == 1
    assert requests("HEAD", RESOURCE, "404") == 1
    assert requests("GET", RESOURCE, "200") == 1
    count = after.delta(before, "uploader_request_duration_seconds_count", method="PATCH", route=RESOURCE)
    assert count == 3
    # Every body byte the client sent, and every one it got back (the download, the 404's
    # problem document, the status reads).
    assert after.delta(before, "uploader_bytes_received_total") == len(data)
    assert after.delta(before, "uploader_bytes_sent_total") >= len(data)
    assert after.delta(before, "uploader_uploads_created_total", protocol="tus") == 1
    assert after.delta(before, "uploader_uploads_finished_total", protocol="tus") == 1
    assert after.value("uploader_patches_in_flight") == 0
    assert after.delta(before, "uploader_processing_finished_total", state="ready") == 1


async def test_bytes_sent_are_the_bodies_the_client_received(app_client: httpx.AsyncClient) -> None:
    data = os.urandom(50_000)
    path = await create(app_client, len(data))
    assert (await patch(app_client, path, 0, data)).status_code == 204
    await settled_status(app_client, upload_id(path))
    before = await scrape(app_client)
    received = 0
    for headers in ({}, {"Range": "bytes=100-199"}, {"Range": "bytes=-7"}):
        received += len(
            (await app_client.get(f"/api/v1/uploads/{upload_id(path)}/content", headers=headers)).content
        )
    after = await scrape(app_client)
    assert received == len(data) + 100 + 7
    # A scrape's own body is counted once it has been sent: ``before``'s is in ``after``.
    assert after.delta(before, "uploader_bytes_sent_total") == received + before.size


async def test_uploads_are_counted_by_protocol_and_by_how_they_end(app_client: httpx.AsyncClient) -> None:
    before = await scrape(app_client)
    draft = await app_client.post(
        "/files/",
        content=b"x" * 1000,
        headers={"Upload-Draft-Interop-Version": "8", "Upload-Complete": "?1"},
    )
    assert draft.status_code == 201, draft.text
    form = await app_client.post(
        "/api/v1/uploads", files=[("a", ("a.bin", b"a" * 10)), ("b", ("b.bin", b"b"))]
    )
    assert form.status_code == 201, form.text
    doomed = await create(app_client, 10)
    assert (await app_client.delete(doomed, headers=TUS)).status_code == 204
    after = await scrape(app_client)
    assert after.delta(before, "uploader_uploads_created_total", protocol="ietf") == 1
    assert after.delta(before, "uploader_uploads_finished_total", protocol="ietf") == 1
    assert after.delta(before, "uploader_uploads_created_total", protocol="form") == 2
    assert after.delta(before, "uploader_uploads_finished_total", protocol="form") == 2
    assert after.delta(before, "uploader_uploads_created_total", protocol="tus") == 1
    assert after.delta(before, "uploader_uploads_finished_total", protocol="tus") == 0
    assert after.delta(before, "uploader_uploads_terminated_total") == 1
    assert after.delta(before, "uploader_requests_total", method="DELETE", route=RESOURCE, status="204") == 1


async def test_label_values_never_come_from_the_request(app_client: httpx.AsyncClient) -> None:
    before = await scrape(app_client)
    for _ in range(25):
        junk = secrets.token_hex(8)
        assert (await app_client.get(f"/{junk}/{junk}")).status_code == 404
        assert (await app_client.request("BREW", f"/files/{junk}")).status_code in (404, 405)
        assert (await app_client.head(f"/files/{junk}", headers=TUS)).status_code == 404
    after = await scrape(app_client)
    routes = {labels["route"] for labels in after.series("uploader_requests_total")}
    methods = {labels["method"] for labels in after.series("uploader_requests_total")}
    assert not any(len(route) >= 16 and route.strip("/").isalnum() for route in routes), routes
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    assert after.delta(before, "uploader_requests_total", method="GET", route="unmatched", status="404") == 25
    assert after.delta(before, "uploader_requests_total", method="HEAD", route=RESOURCE, status="404") == 25
    new_series = {
        labels
        for name, labels in set(after.samples) - set(before.samples)
        if name == "uploader_requests_total"
    }
    assert len(new_series) <= 3, sorted(new_series)


async def test_the_token_guards_the_endpoint(tmp_path: Path, sqlite_url: str) -> None:
    settings = Settings(data_dir=tmp_path, database_url=sqlite_url, metrics_token="s3cret-scrape")
    async with in_process_client(settings) as client:
        refused = await client.get("/metrics")
        assert refused.status_code == 401
        assert refused.json()["code"] == "auth.unauthorized"
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        allowed = await scrape(client, Authorization="Bearer s3cret-scrape")
        assert allowed.value("uploader_requests_total", method="GET", route="/metrics", status="401") >= 2


async def test_metrics_can_be_turned_off(tmp_path: Path, sqlite_url: str) -> None:
    settings = Settings(data_dir=tmp_path, database_url=sqlite_url, metrics=False)
    async with in_process_client(settings) as client:
        answer = await client.get("/metrics")
        assert answer.status_code == 404
        assert answer.json()["code"] == "request.not_found"
        assert answer.headers["x-request-id"]  # request ids stay


async def test_uploads_by_state_are_read_from_the_database_when_scraped(
    app_client: httpx.AsyncClient,
) -> None:
    # Each test starts with no uploads recorded.
    paths = [await create(app_client, 5) for _ in range(3)]
    assert (await app_client.delete(paths[0], headers=TUS)).status_code == 204
    scraped = await scrape(app_client)
    assert scraped.value("uploader_uploads", state="created") == 2
    assert scraped.value("uploader_uploads", state="terminated") == 1
    assert scraped.value("uploader_uploads", state="ready") == 0
    assert {labels["state"] for labels in scraped.series("uploader_uploads")} >= {
        "created",
        "receiving",
        "ready",
        "failed",
        "terminated",
        "expired",
    }


@pytest.mark.parametrize("backend", ["sqlite+local"], indirect=True)
async def test_expired_uploads_are_counted(app_client: httpx.AsyncClient) -> None:
    service = app_client.app.state.uploads  # type: ignore[attr-defined]
    paths = [await create(app_client, 10) for _ in range(2)]
    before = await scrape(app_client)
    past = utcnow() - timedelta(seconds=1)
    for path in paths:
        upload = await service.get("anonymous", upload_id(path))
        await service.db.run(lambda s, u=upload: repository.set_fields(s, u, expires_at=past))
    assert await service.expire_due() == 2
    after = await scrape(app_client)
    assert after.delta(before, "uploader_uploads_expired_total") == 2
    assert after.delta(before, "uploader_uploads_terminated_total") == 0
