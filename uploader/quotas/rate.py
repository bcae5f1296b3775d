"""Rate limits (the ``limits`` library): creations per principal, requests per client
address. Counters live in Redis in the full stack (shared by every process) and in
memory in the embedded default. A refusal is ``429 rate.limited`` with ``Retry-After``
and the IETF draft's ``RateLimit`` and ``RateLimit-Policy`` fields."""

from __future__ import annotations

import ipaddress
import math
import time
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from uploader.kit.errors import RETRY_AFTER_SECONDS, DependencyUnavailable, ProblemError, problem_response
from uploader.kit.logging import get_logger
from uploader.settings import Settings

if TYPE_CHECKING:
    from limits import RateLimitItem

log = get_logger(__name__)

# Requests to these paths are never limited: probes must see the server as it is.
UNLIMITED_PATHS = ("/healthz", "/readyz")


def _policy(name: str, item: RateLimitItem) -> str:
    return f'"{name}";q={item.amount};w={item.get_expiry()}'


class RateLimits:
    def __init__(self, settings: Settings) -> None:
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in settings.trusted_proxies]
        self.create: RateLimitItem | None = None
        self.per_ip: RateLimitItem | None = None
        self.limiter: Any = None
        if not (settings.rate_limit_create or settings.rate_limit_ip):
            return  # the library is imported only where limits are set (it weighs ~10 MiB)
        from limits import parse
        from limits.aio.storage import MemoryStorage, RedisStorage, Storage
        from limits.aio.strategies import FixedWindowRateLimiter
        from limits.errors import StorageError

        self._storage_error = StorageError
        self.create = parse(settings.rate_limit_create) if settings.rate_limit_create else None
        self.per_ip = parse(settings.rate_limit_ip) if settings.rate_limit_ip else None
        storage: Storage
        if settings.redis_url:
            storage = RedisStorage(
                "async+" + settings.redis_url,
                implementation="redispy",
                key_prefix=f"{settings.redis_prefix}:rate",
                wrap_exceptions=True,
                socket_timeout=2,
                socket_connect_timeout=2,
            )
        else:
            storage = MemoryStorage()
        self.limiter = FixedWindowRateLimiter(storage)

    async def hit_create(self, principal: str, cost: int = 1) -> None:
        if self.create is not None:
            await self._hit("create", self.create, principal, cost)

    async def hit_ip(self, address: str) -> None:
        if self.per_ip is not None:
            await self._hit("ip", self.per_ip, address, 1)

    async def _hit(self, name: str, item: RateLimitItem, identity: str, cost: int) -> None:
        assert self.limiter is not None
        try:
            if await self.limiter.hit(item, name, identity, cost=cost):
                return
            stats = await self.limiter.get_window_stats(item, name, identity)
        except self._storage_error as exc:
            raise DependencyUnavailable("redis", f"rate limits: {exc}") from exc
        wait = max(1, math.ceil(stats.reset_time - time.time()))
        raise ProblemError(
            "rate.limited",
            f"at most {item.amount} per {item.get_expiry()} s ({name}); try again in {wait} s",
            headers={
                "Retry-After": str(wait),
                "RateLimit-Policy": _policy(name, item),
                "RateLimit": f'"{name}";r={stats.remaining};t={wait}',
            },
        )

    def client_address(self, scope: Scope) -> str:
        """The client's address: the peer's, or, when the peer is a trusted proxy, the
        nearest address in X-Forwarded-For that is not one of them."""
        client = scope.get("client")
        peer = client[0] if client else "unknown"
        if not self.trusted or not self._is_trusted(peer):
            return peer
        forwarded = ""
        for name, value in scope.get("headers", ()):
            if name == b"x-forwarded-for":
                forwarded = f"{forwarded},{value.decode('latin-1')}" if forwarded else value.decode("latin-1")
        for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
            if not self._is_trusted(hop):
                return hop
        return peer

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted)


class ClientRateLimit:
    """ASGI middleware: every request counts against its client address's limit."""

    def __init__(self, app: ASGIApp, rates: RateLimits) -> None:
        self.app = app
        self.rates = rates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in UNLIMITED_PATHS:
            try:
                await self.rates.hit_ip(self.rates.client_address(scope))
            except (ProblemError, DependencyUnavailable) as exc:
                request = Request(scope, receive)
                if isinstance(exc, ProblemError):
                    response = problem_response(request, exc.code, exc.detail, exc.headers)
                else:
                    response = problem_response(
                        request, "service.unavailable", str(exc), {"Retry-After": RETRY_AFTER_SECONDS}
                    )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
