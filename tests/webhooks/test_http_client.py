"""The deliveries' HTTP client against receivers that answer in every way HTTP/1.1
allows (a length, chunks, to the close, closing idle connections) and some it does not."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from uploader.settings import Settings
from uploader.webhooks.delivery import DeliveryFailed, deliver
from uploader.webhooks.http_client import ReceiverError, WebhookClient
from uploader.webhooks.outbox import Claimed

HEADERS = b"X-Uploader-Event: upload.ready\r\n"


@asynccontextmanager
async def receiver(
    answer: Callable[[int], bytes], *, close_after: bool = False
) -> AsyncIterator[dict[str, int]]:
    """A raw TCP receiver: reads each request (head and Content-Length body) and writes
    ``answer(n)`` for the n-th; ``close_after``: closes the connection after each answer."""
    seen = {"requests": 0, "connections": 0}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen["connections"] += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                seen["requests"] += 1
                writer.write(answer(seen["requests"]))
                await writer.drain()
                if close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    seen["port"] = server.sockets[0].getsockname()[1]
    async with server:
        yield seen


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nthank",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nX-T: 1\r\n\r\n",
    ],
    ids=["no-body", "length", "chunked"],
)
async def test_answers_with_a_known_end_keep_the_connection(answer: bytes) -> None:
    async with receiver(lambda _n: answer) as seen:
        client = WebhookClient(f"http://127.0.0.1:{seen['port']}/hooks")
        statuses = [await client.post(b'{"n":%d}' % n, HEADERS) for n in range(3)]
        client.close()
    assert statuses == [int(answer[9:12])] * 3
    assert seen == {**seen, "requests": 3, "connections": 1}


async def test_an_answer_without_a_length_or_with_close_ends_its_connection() -> None:
    answers = {
        1: b"HTTP/1.1 200 OK\r\n\r\nbody to the close",
        2: b"HTTP/1.1 202 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    }
    async with receiver(lambda n: answers.get(n % 2 + 1, b""), close_after=True) as seen:
        client = WebhookClient(f"http://127.0.0.1:{seen['port']}/hooks")
        statuses = [await client.post(b"{}", HEADERS) for _ in range(4)]
        client.close()
    assert sorted(set(statuses)) == [200, 202]
    assert seen["connections"] == 4


async def test_a_receiver_that_closed_an_idle_connection_gets_the_request_on_a_fresh_one() -> None:
    async with receiver(lambda _n: b"HTTP/1.1 204 No Content\r\n\r\n", close_after=True) as seen:
        client = WebhookClient(f"http://127.0.0.1:{seen['port']}/hooks")
        assert await client.post(b"{}", HEADERS) == 204  # kept: the answer did not say close
        await asyncio.sleep(0.1)  # meanwhile the receiver closed it
        assert await client.post(b"{}", HEADERS) == 204
        client.close()
    assert seen["requests"] == 2
    assert seen["connections"] == 2


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not an HTTP answer"),
        (b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n", "headers are too long"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "the connection closed in the middle"),
    ],
    ids=["not-http", "huge-head", "cut-body"],
)
async def test_an_answer_that_is_not_usable_is_an_error_and_is_not_sent_again(
    answer: bytes, message: str
) -> None:
    async with receiver(lambda _n: answer, close_after=True) as seen:
        client = WebhookClient(f"http://127.0.0.1:{seen['port']}/hooks")
        with pytest.raises(ReceiverError, match=message):
            await client.post(b"{}", HEADERS)
        client.close()
    assert seen["requests"] == 1


async def test_a_receiver_that_is_not_there_is_an_error() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    client = WebhookClient(f"http://127.0.0.1:{port}/hooks")
    with pytest.raises(ReceiverError, match="cannot connect"):
        await client.post(b"{}", HEADERS)


def test_only_http_urls_are_accepted() -> None:
    with pytest.raises(ValueError, match="not an http"):
        WebhookClient("ftp://example.com/hooks")


async def test_a_receiver_that_does_not_answer_in_time_fails_the_delivery_and_its_connection_goes(
    tmp_path: Path,
) -> None:
    answers = iter([None, b"HTTP/1.1 204 No Content\r\n\r\n"])
    silent: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0]))
        answer = next(answers)
        if answer is None:  # reads the request and says nothing, holding the connection
            silent.append(writer)
            return
        writer.write(answer)
        await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = Settings(
        data_dir=tmp_path,
        webhook_url=f"http://127.0.0.1:{port}/hooks",
        webhook_secret="s" * 40,
        webhook_timeout_seconds=0.3,
    )
    body = '{"id":"whd_1","type":"upload.ready","upload_id":"u1","data":{}}'
    delivery = Claimed(1, "whd_1", "u1", "upload.ready", body, 0, None, None)
    async with server:
        client = WebhookClient(f"http://127.0.0.1:{port}/hooks")
        started = asyncio.get_running_loop().time()
        with pytest.raises(DeliveryFailed, match=r"no answer within 0\.3 s"):
            async with asyncio.timeout(5):  # a delivery that waited on would fail here instead
                await deliver(settings, delivery, client)
        assert 0.25 < asyncio.get_running_loop().time() - started < 2
        # The silent connection is not kept: the next delivery gets a fresh one, and an answer.
        await deliver(settings, delivery, client)
        client.close()
        for writer in silent:
            writer.close()


@asynccontextmanager
async def silent_receiver() -> AsyncIterator[int]:
    """A receiver that reads each request's head and never answers; its port."""
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        held.append(writer)  # never answers

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]
        for writer in held:
            writer.close()


async def test_a_post_waiting_for_a_busy_connection_counts_the_wait_in_its_time() -> None:
    async with silent_receiver() as port:
        client = WebhookClient(f"http://127.0.0.1:{port}/hooks", connections=1)
        first = asyncio.create_task(client.post(b"{}", HEADERS, within=5))
        await asyncio.sleep(0.1)  # holds the only connection
        started = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError):
            await client.post(b"{}", HEADERS, within=0.3)
        assert 0.25 < asyncio.get_running_loop().time() - started < 2
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        # The slot came back: with the silent receiver, the next post times out on its own
        # exchange, not waiting for a connection forever.
        with pytest.raises(TimeoutError):
            await client.post(b"{}", HEADERS, within=0.3)
        client.close()


async def test_each_post_ends_at_its_own_deadline_whatever_the_others_wait_for() -> None:
    """One timer watches every exchange in flight: a post with a nearer deadline that
    starts after one with a later deadline still ends on time, and so does the other."""
    loop = asyncio.get_running_loop()

    async def ended_after(within: float) -> float:
        started = loop.time()
        with pytest.raises(TimeoutError):
            await client.post(b"{}", HEADERS, within=within)
        return loop.time() - started

    async with silent_receiver() as port:
        client = WebhookClient(f"http://127.0.0.1:{port}/hooks", connections=4)
        late = asyncio.create_task(ended_after(1.2))
        await asyncio.sleep(0.1)
        soon = asyncio.create_task(ended_after(0.3))
        async with asyncio.timeout(5):
            assert 0.25 < await soon < 0.9
            assert 1.15 < await late < 2.0
        client.close()
