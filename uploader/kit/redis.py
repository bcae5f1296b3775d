"""One way to make a Redis client: bounded waits, and a retry over a fresh connection.

A connection that died with its server (a restart) is found out when it is next used;
the retry makes that use go through on a new connection instead of failing the request,
and the timeouts make a Redis that does not answer an error instead of a hang.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


def redis_client(url: str) -> Redis:
    return Redis.from_url(
        url,
        socket_connect_timeout=3,
        socket_timeout=5,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
