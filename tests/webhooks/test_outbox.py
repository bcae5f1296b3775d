"""The webhook outbox in one process, on SQLite and PostgreSQL: events written with their
change, delivered at least once under one id and in order per upload, dead-lettered and
sent again, listed for admins, pruned; receivers that redirect or sit at metadata
addresses are refused."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError
from sqlalchemy import select, update

from tests.api.helpers import settled_status, upload_bytes, upload_id
from tests.auth.tokens import SECRET, bearer, hs256
from tests.images import jpeg
from tests.observability.metrics import scrape_url
from tests.support import (
    WebhookReceiver,
    assert_every_event_delivered,
    free_port,
    in_process_client,
    metadata,
    uploader_command,
)
from uploader.db.engine import Database
from uploader.db.models import utcnow, webhook_outbox
from uploader.settings import Settings
from uploader.webhooks.delivery import OutboxDispatcher
from uploader.webhooks.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify


@pytest.fixture(params=["sqlite+local", "postgres+local"])
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    database, storage = request.param.split("+")
    return database, storage


@pytest.fixture
def receiver() -> Any:
    hooked = WebhookReceiver()
    yield hooked
    hooked.close()


def with_webhooks(settings: Settings, receiver: WebhookReceiver, **changes: Any) -> Settings:
    return settings.model_copy(
        update={
            "webhook_url": receiver.url,
            "webhook_secret": "whsec",
            "webhook_backoff_seconds": 0.05,
            "webhook_poll_seconds": 0.05,
            **changes,
        }
    )


async def outbox_rows(settings: Settings) -> list[dict[str, Any]]:
    db = Database(settings.resolved_database_url)
    try:
        rows = await db.run(lambda c: c.execute(select(webhook_outbox).order_by(webhook_outbox.c.seq)).all())
    finally:
        await db.dispose()
    return [dict(row._mapping) for row in rows]


async def rows_once(settings: Settings, done: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    """The outbox's rows once ``done`` says so (within 10 s)."""
    for _ in range(200):
        rows = await outbox_rows(settings)
        if done(rows):
            return rows
        await asyncio.sleep(0.05)
    raise AssertionError(f"the outbox never got there: {rows}")


async def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``uploader ARGS`` in its own process, as an operator runs it."""
    command = [*uploader_command(), *args]
    return await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=60
    )


def all_dead(rows: list[dict[str, Any]]) -> bool:
    return {row["status"] for row in rows} == {"dead"}


async def test_a_receiver_that_is_down_gets_every_event_once_it_is_up_under_one_id_each(
    settings: Settings, receiver: WebhookReceiver
) -> None:
    receiver.down()
    hooked = with_webhooks(settings, receiver, processing="off")
    async with in_process_client(hooked) as client:
        ids = [upload_id(await upload_bytes(client, f"file {n}".encode() * 50)) for n in range(5)]
        # The events are rows already, tried and failed, not tasks in memory; an
        # upload's ready waits behind its received.
        rows = await rows_once(
            hooked, lambda rows: all(r["attempts"] >= 2 for r in rows if r["type"] == "upload.received")
        )
        assert sorted((r["upload_id"], r["type"]) for r in rows) == sorted(
            (uid, kind) for uid in ids for kind in ("upload.received", "upload.ready")
        )
        assert {r["status"] for r in rows} == {"pending"}
        assert all("cannot connect" in r["last_error"] for r in rows if r["type"] == "upload.received")
        assert all(r["attempts"] == 0 for r in rows if r["type"] == "upload.ready")
        receiver.up()
        await asyncio.to_thread(
            assert_every_event_delivered, receiver, {uid: ["upload.received", "upload.ready"] for uid in ids}
        )
    assert {r["id"] for r in rows} == {delivery_id for delivery_id, _ in receiver.deliveries()}
    for headers, body in receiver.received:
        assert verify("whsec", headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])


async def test_processing_failures_and_completions_are_reported_in_order(
    settings: Settings, receiver: WebhookReceiver
) -> None:
    receiver.failures_left = 3  # the first attempts are refused: order must still hold
    hooked = with_webhooks(settings, receiver)
    async with in_process_client(hooked) as client:
        good = upload_id(
            await upload_bytes(client, jpeg(64, 48), 4000, **{"Upload-Metadata": metadata(filename="a.jpg")})
        )
        bad = upload_id(
            await upload_bytes(
                client,
                b"\xff\xd8\xff\xe0" + b"\0" * 3000,
                **{"Upload-Metadata": metadata(filetype="image/jpeg")},
            )
        )
        assert (await settled_status(client, good))["state"] == "ready"
        assert (await settled_status(client, bad))["state"] == "failed"
        await asyncio.to_thread(
            assert_every_event_delivered,
            receiver,
            {good: ["upload.received", "upload.ready"], bad: ["upload.received", "upload.failed"]},
        )
    ready = next(p for _, p in receiver.deliveries() if p["type"] == "upload.ready")
    assert ready["data"]["state"] == "ready"
    assert ready["data"]["detected_type"] == "image/jpeg"
    assert len(ready["data"]["sha256"]) == 64


async def test_a_form_reports_each_file_with_its_record(
    settings: Settings, receiver: WebhookReceiver
) -> None:
    hooked = with_webhooks(settings, receiver, processing="off")
    async with in_process_client(hooked) as client:
        response = await client.post(
            "/api/v1/uploads", files=[("file", ("a.txt", b"a" * 100)), ("file", ("b.txt", b"b" * 200))]
        )
        assert response.status_code == 201, response.text
        ids = [item["id"] for item in response.json()["uploads"]]
        await asyncio.to_thread(
            assert_every_event_delivered, receiver, {uid: ["upload.received", "upload.ready"] for uid in ids}
        )


async def test_dead_letters_are_listed_for_admins_and_sent_again_by_the_cli(
    settings: Settings, receiver: WebhookReceiver
) -> None:
    receiver.failing = True
    hooked = with_webhooks(
        settings, receiver, processing="off", webhook_max_attempts=2, jwt_secret=SecretStr(SECRET)
    )
    user, admin = bearer(hs256("alice")), bearer(hs256("ops", scope="read admin"))
    async with in_process_client(hooked) as client:
        client.headers.update(user)
        uid = upload_id(await upload_bytes(client, b"x" * 500))
        await rows_once(hooked, all_dead)
        assert len(receiver.attempts) == 4  # two events, two attempts each

        assert (await client.get("/api/v1/webhooks/deliveries", headers=user)).status_code == 403
        listed = await client.get("/api/v1/webhooks/deliveries", params={"status": "dead"}, headers=admin)
        assert listed.status_code == 200
        items = listed.json()["items"]
        assert [(i["type"], i["attempts"], i["upload_id"]) for i in items] == [
            ("upload.ready", 2, uid),
            ("upload.received", 2, uid),
        ]
        assert items[0]["last_error"] == "receiver answered 503"
        paged = await client.get("/api/v1/webhooks/deliveries", params={"limit": 1}, headers=admin)
        rest = await client.get(
            "/api/v1/webhooks/deliveries", params={"cursor": paged.json()["next_cursor"]}, headers=admin
        )
        assert [i["id"] for i in paged.json()["items"] + rest.json()["items"]] == [i["id"] for i in items]
        bad_status = await client.get("/api/v1/webhooks/deliveries", params={"status": "lost"}, headers=admin)
        assert bad_status.status_code == 400
        assert bad_status.json()["code"] == "request.invalid"

        receiver.failing = False
        env = {"UPLOADER_DATABASE_URL": hooked.resolved_database_url, "PATH": "/usr/bin:/bin"}
        dead = await cli(env, "webhooks", "list", "--status", "dead")
        assert dead.returncode == 0, dead.stderr
        lines = [json.loads(line) for line in dead.stdout.splitlines()]
        assert [(line["id"], line["attempts"], line["last_error"]) for line in lines] == [
            (i["id"], 2, "receiver answered 503") for i in items
        ]
        retried = await cli(env, "webhooks", "retry", "--all-failed")
        assert retried.returncode == 0, retried.stderr
        assert "2 deliveries will be sent again" in retried.stderr
        await asyncio.to_thread(
            assert_every_event_delivered, receiver, {uid: ["upload.received", "upload.ready"]}
        )
        # The ids are the ones the receiver was refusing: a retry is the same event.
        assert {d for d, _ in receiver.deliveries()} == {i["id"] for i in items}
        unknown = await cli(env, "webhooks", "retry", "whd_missing")
        assert unknown.returncode == 1
        assert "no delivery whd_missing" in unknown.stderr


async def test_two_dispatchers_draining_at_once_never_send_an_event_twice(
    settings: Settings, receiver: WebhookReceiver
) -> None:
    receiver.down()  # the server's own dispatcher only fails; ours drain once it is up
    hooked = with_webhooks(settings, receiver, processing="off", webhook_poll_seconds=3600)
    async with in_process_client(hooked) as client:
        ids = [upload_id(await upload_bytes(client, b"y" * (100 + n))) for n in range(20)]
    receiver.up()
    db = Database(hooked.resolved_database_url)
    await db.run(
        lambda c: c.execute(update(webhook_outbox).values(next_attempt_at=utcnow(), lease_until=None))
    )
    first, second = OutboxDispatcher(hooked, db, batch=3), OutboxDispatcher(hooked, db, batch=3)
    try:
        counts = await asyncio.gather(first.drain(), second.drain())
    finally:
        await first.close()
        await second.close()
        await db.dispose()
    assert sum(counts) == 40
    delivered = [d for d, _ in receiver.deliveries()]
    assert len(delivered) == len(set(delivered)) == 40  # no event went out twice
    assert_every_event_delivered(receiver, {uid: ["upload.received", "upload.ready"] for uid in ids}, 1)


async def test_delivered_rows_are_pruned_after_the_retention_and_dead_ones_stay(
    settings: Settings, receiver: WebhookReceiver
) -> None:
    hooked = with_webhooks(settings, receiver, processing="off", webhook_retention_days=1)
    async with in_process_client(hooked) as client:
        uid = upload_id(await upload_bytes(client, b"z" * 300))
        await asyncio.to_thread(
            assert_every_event_delivered, receiver, {uid: ["upload.received", "upload.ready"]}
        )
    db = Database(hooked.resolved_database_url)
    old = utcnow() - timedelta(days=2)
    c = webhook_outbox.c
    await db.run(
        lambda s: s.execute(
            update(webhook_outbox).where(c.type == "upload.received").values(delivered_at=old)
        )
    )
    await db.run(
        lambda s: s.execute(
            update(webhook_outbox).where(c.type == "upload.ready").values(status="dead", delivered_at=old)
        )
    )
    dispatcher = OutboxDispatcher(hooked, db)
    try:
        assert await dispatcher.prune() == 1
    finally:
        await dispatcher.close()
        await db.dispose()
    assert [(r["type"], r["status"]) for r in await outbox_rows(hooked)] == [("upload.ready", "dead")]


async def test_a_shutdown_lets_the_deliveries_in_flight_finish_and_records_them(
    settings: Settings, receiver: WebhookReceiver
) -> None:
    """A graceful stop while the receiver has a delivery and has not answered yet: the
    answer is awaited and recorded, so the next start does not send that event again."""
    receiver.answer_delay = 0.5
    hooked = with_webhooks(settings, receiver, processing="off")
    async with in_process_client(hooked) as client:
        await upload_bytes(client, b"q" * 300)
        assert await asyncio.to_thread(receiver.wait_for, {"upload.ready"})
    # The app stopped while the receiver held upload.ready unanswered.
    rows = await outbox_rows(hooked)
    assert [(r["type"], r["status"]) for r in rows] == [
        ("upload.received", "delivered"),
        ("upload.ready", "delivered"),
    ]


async def test_no_webhooks_configured_writes_no_outbox_rows(settings: Settings) -> None:
    async with in_process_client(settings.model_copy(update={"processing": "none"})) as client:
        await upload_bytes(client, b"q" * 100)
    assert await outbox_rows(settings) == []


async def test_a_redirecting_receiver_is_not_followed(settings: Settings, receiver: WebhookReceiver) -> None:
    elsewhere = WebhookReceiver()
    receiver.redirect_to = elsewhere.url
    hooked = with_webhooks(settings, receiver, processing="off", webhook_max_attempts=1)
    try:
        async with in_process_client(hooked) as client:
            await upload_bytes(client, b"r" * 100)
            await rows_once(hooked, all_dead)
    finally:
        elsewhere.close()
    assert len(receiver.attempts) == 2
    assert elsewhere.attempts == []
    assert {r["last_error"] for r in await outbox_rows(hooked)} == {"receiver answered 307"}


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/hook",
        "http://[fe80::1]/hook",
        "http://metadata.google.internal/computeMetadata/v1/",
    ],
)
def test_webhook_urls_at_metadata_addresses_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(ValidationError, match="UPLOADER_WEBHOOK_ALLOW_PRIVATE"):
        Settings(webhook_url=url, webhook_secret="s")
    with pytest.raises(ValidationError, match="UPLOADER_HOOK_URL"):
        Settings(hook_url=url, hook_secret="s")
    assert Settings(webhook_url=url, webhook_secret="s", webhook_allow_private=True).webhook_url == url


async def test_a_receiver_name_that_resolves_to_a_metadata_address_is_refused_at_delivery(
    settings: Settings, receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name that passed the settings but points at the metadata service now (the
    resolver is outside the system: its answer is what the test sets)."""
    import socket

    from uploader.webhooks import addresses

    async def resolve(self: Any, host: str, *args: Any, **kwargs: Any) -> list[Any]:
        address = "169.254.169.254" if host == "hooks.example.test" else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, 80))]

    monkeypatch.setattr(type(asyncio.get_running_loop()), "getaddrinfo", resolve)
    monkeypatch.setattr(addresses, "_verdicts", {})
    url = f"http://hooks.example.test:{receiver.port}/hooks"
    hooked = with_webhooks(settings, receiver, processing="off", webhook_url=url, webhook_max_attempts=1)
    async with in_process_client(hooked) as client:
        await upload_bytes(client, b"m" * 100)
        rows = await rows_once(hooked, all_dead)
    assert {r["last_error"] for r in rows} == {
        "refused receiver: hooks.example.test resolves to 169.254.169.254, a link-local or metadata address"
    }
    assert receiver.attempts == []  # never connected
    assert await addresses.refused_address(receiver.url) is None  # loopback stays allowed


async def test_a_dispatcher_process_of_its_own_delivers_what_the_api_only_wrote(
    settings: Settings, receiver: WebhookReceiver, tmp_path: Any
) -> None:
    hooked = with_webhooks(settings, receiver, processing="off", webhook_dispatcher="process")
    async with in_process_client(hooked) as client:
        ids = [upload_id(await upload_bytes(client, b"s" * (100 + n))) for n in range(3)]
        await asyncio.sleep(0.5)
        assert receiver.received == []  # the API process only wrote the outbox
        env = {
            "PATH": "/usr/bin:/bin",
            "UPLOADER_DATABASE_URL": hooked.resolved_database_url,
            "UPLOADER_DATA_DIR": str(tmp_path),
            "UPLOADER_WEBHOOK_URL": receiver.url,
            "UPLOADER_WEBHOOK_SECRET": "whsec",
            "UPLOADER_WEBHOOK_POLL_SECONDS": "0.1",
        }
        metrics_port = free_port()
        dispatcher = await asyncio.create_subprocess_exec(
            *uploader_command(),
            "webhooks",
            "deliver",
            f"--metrics-port={metrics_port}",
            env=env,
            stderr=subprocess.PIPE,
        )
        expected = {uid: ["upload.received", "upload.ready"] for uid in ids}
        try:
            await asyncio.to_thread(assert_every_event_delivered, receiver, expected)
            # It serves its own metrics: the deliveries it made.
            scraped = await asyncio.to_thread(scrape_url, f"http://127.0.0.1:{metrics_port}")
            assert scraped.value("uploader_webhook_deliveries_total", outcome="delivered") == 6
        finally:
            dispatcher.terminate()
            _, errors = await asyncio.wait_for(dispatcher.communicate(), 30)
        assert dispatcher.returncode == 0, errors
        assert b"webhooks.dispatcher_stopped" in errors
