"""The lean Redis client of the hot path, against a real Redis: replies of every kind,
in order under pipelining, what is sent at once in one write, one client for a process's
hot commands, scripts that Redis forgot, the database and user of the URL, a connection
killed under it, and a Redis that stops answering."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest
import redis.asyncio
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from uploader.db.migrate import upgrade_to_head
from uploader.events.redis_bus import RedisEventBus
from uploader.kit.resp import LeanRedis, Script, _Incomplete, _parse
from uploader.runtime import Runtime
from uploader.settings import Settings
from uploader.uploads.redis_locks import RedisLocker


def test_every_kind_of_reply_parses_whole_and_waits_for_the_rest() -> None:
    replies = (
        b"+OK\r\n:-12\r\n$5\r\nhe\r\nl\r\n$-1\r\n*3\r\n:1\r\n*1\r\n$0\r\n\r\n$-1\r\n*-1\r\n-ERR wrong\r\n"
    )
    expected = [b"OK", -12, b"he\r\nl", None, [1, [b""], None], None]
    for cut in range(len(replies)):  # however the bytes come apart, nothing parses early
        buffer = bytearray(replies[:cut])
        at, parsed = 0, []
        try:
            while at < len(buffer):
                value, at = _parse(buffer, at)
                parsed.append(value)
        except _Incomplete:
            pass
        assert parsed == expected[: len(parsed)]
    buffer = bytearray(replies)
    at, parsed = 0, []
    while at < len(buffer):
        value, at = _parse(buffer, at)
        parsed.append(value)
    assert parsed[:-1] == expected
    assert isinstance(parsed[-1], ResponseError)
    assert str(parsed[-1]) == "ERR wrong"


@pytest.fixture
async def plain(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_pipelined_commands_each_get_their_own_reply(redis_url: str) -> None:
    lean = LeanRedis(redis_url)
    key = f"test-lean-{secrets.token_hex(4)}"
    try:
        counts = await asyncio.gather(*(lean.call("INCR", key) for _ in range(300)))
        assert sorted(counts) == list(range(1, 301))
        assert counts == sorted(counts)  # sent in order, answered in order
        values = await asyncio.gather(*(lean.call("SET", f"{key}:{n}", n * "x") for n in range(50)))
        assert values == [b"OK"] * 50
        got = await asyncio.gather(*(lean.call("GET", f"{key}:{n}") for n in range(50)))
        assert got == [n * b"x" for n in range(50)]
        with pytest.raises(ResponseError):
            await lean.call("LPUSH", key, "x")  # the key holds a number: an error reply
        assert await lean.call("GET", f"{key}:none") is None
    finally:
        await lean.call("DEL", key, *(f"{key}:{n}" for n in range(50)))
        await lean.close()


async def test_a_script_redis_forgot_is_sent_whole(redis_url: str, plain: redis.asyncio.Redis) -> None:
    lean = LeanRedis(redis_url)
    script = Script(f"-- {secrets.token_hex(4)}\nreturn {{KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}}")
    try:
        assert await lean.run(script, ["k"], ["v", 41]) == [b"k", b"v", 42]
        assert await plain.script_exists(script.sha.decode()) == [True]
        await plain.script_flush()  # as a restart of Redis would
        assert await lean.run(script, ["k2"], ["w", 1]) == [b"k2", b"w", 2]
    finally:
        await lean.close()


async def test_the_url_names_the_database_and_the_user(redis_url: str, plain: redis.asyncio.Redis) -> None:
    user, password = f"lean-{secrets.token_hex(4)}", secrets.token_hex(8)
    key = f"test-lean-{secrets.token_hex(4)}"
    await plain.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all"])
    base = redis_url.split("://", 1)[1].split("/", 1)[0]
    lean = LeanRedis(f"redis://{user}:{password}@{base}/7")
    wrong = LeanRedis(f"redis://{user}:nope@{base}/7")
    try:
        await lean.call("SET", key, "in seven")
        seven = redis.asyncio.Redis.from_url(f"redis://{base}/7")
        try:
            assert await seven.get(key) == b"in seven"
            await seven.delete(key)
        finally:
            await seven.aclose()
        with pytest.raises(redis.exceptions.ConnectionError):
            await wrong.call("PING")
    finally:
        await plain.acl_deluser(user)
        await lean.close()
        await wrong.close()


async def test_a_killed_connection_is_replaced_and_the_command_goes_through(
    redis_url: str, plain: redis.asyncio.Redis
) -> None:
    lean = LeanRedis(redis_url)
    try:
        name = f"lean-{secrets.token_hex(4)}"
        await lean.call("CLIENT", "SETNAME", name)
        killed = [c for c in await plain.client_list() if c.get("name") == name]
        assert len(killed) == 1
        await plain.execute_command("CLIENT", "KILL", "ID", killed[0]["id"])
        assert await lean.call("PING") == b"PONG"  # on a new connection
        assert not [c for c in await plain.client_list() if c.get("name") == name]
    finally:
        await lean.close()


async def test_a_redis_that_stops_answering_is_a_timeout_then_it_recovers(
    redis_url: str, plain: redis.asyncio.Redis
) -> None:
    lean = LeanRedis(redis_url, reply_timeout=0.3)
    key = f"test-lean-{secrets.token_hex(4)}"
    try:
        assert await lean.call("PING") == b"PONG"
        await plain.execute_command("CLIENT", "PAUSE", "1500", "WRITE")
        with pytest.raises(RedisTimeoutError):
            await lean.call("SET", key, "late")  # three tries of 0.3 s, all within the pause
        await asyncio.sleep(1.5)
        assert await lean.call("SET", key, "now") == b"OK"
        assert await lean.call("GET", key) == b"now"
    finally:
        await plain.delete(key)
        await lean.close()


class _CountingTransport:
    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.transport.write(data)

    def close(self) -> None:
        self.transport.close()


async def test_what_is_sent_at_once_goes_out_in_one_write(redis_url: str, plain: redis.asyncio.Redis) -> None:
    lean = LeanRedis(redis_url)
    key = f"test-lean-{secrets.token_hex(4)}"
    try:
        await lean.call("SET", key, 0)
        assert lean._connection is not None
        counting = _CountingTransport(cast(asyncio.Transport, lean._connection.transport))
        lean._connection.transport = cast(asyncio.Transport, counting)
        counts = await asyncio.gather(*(lean.call("INCR", key) for _ in range(100)))
        assert counts == list(range(1, 101))
        assert counting.writes == 1
        await lean.call("INCR", key)  # and one at a time, one each
        await lean.call("INCR", key)
        assert counting.writes == 3
    finally:
        await plain.delete(key)
        await lean.close()


async def test_a_process_s_locks_events_and_tasks_share_one_connection(
    redis_url: str, tmp_path: Path
) -> None:
    settings = Settings(
        redis_url=redis_url,
        redis_prefix=f"test-{secrets.token_hex(4)}",
        processing="celery",
        data_dir=tmp_path,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'uploader.db'}",
    )
    upgrade_to_head(settings.resolved_database_url)
    runtime = await Runtime.start(settings)
    try:
        assert isinstance(runtime.locker, RedisLocker)
        assert isinstance(runtime.events, RedisEventBus)
        assert runtime.task_sender is not None
        shared = runtime.lean_redis
        assert shared is not None
        assert runtime.locker._hot.lean is runtime.events._hot.lean is runtime.task_sender._hot.lean is shared
        async with runtime.locker.hold("upload-1"):  # takes and releases through it
            pass
        connection = shared._connection
        assert connection is not None
        assert not connection.lost
    finally:
        await runtime.close()
    assert connection.lost  # closed with the runtime, once
