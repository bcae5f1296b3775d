"""Rate limits: creations per principal and requests per client address, answered with
``429 rate.limited``, ``Retry-After`` and the IETF draft's RateLimit fields; the PATCHes
of an upload under way are not starved by the creation limit."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from tests.api.helpers import patch
from tests.auth.tokens import SECRET, bearer, hs256
from tests.support import TUS, in_process_client
from uploader.settings import Settings


def _with(settings: Settings, **changes: Any) -> Settings:
    return settings.model_copy(update={"jwt_secret": SecretStr(SECRET), **changes})


def _limited(response: httpx.Response, policy: str, quota: int) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["code"] == "rate.limited"
    assert int(response.headers["Retry-After"]) >= 1
    assert response.headers["RateLimit-Policy"] == f'"{policy}";q={quota};w=60'
    assert re.fullmatch(rf'"{policy}";r=0;t=\d+', response.headers["RateLimit"])


async def _create(client: httpx.AsyncClient, token: str, **headers: str) -> httpx.Response:
    return await client.post("/files/", headers={**TUS, "Upload-Length": "3", **bearer(token), **headers})


async def test_the_creation_limit_is_per_principal_and_spares_uploads_under_way(settings: Settings) -> None:
    async with in_process_client(_with(settings, rate_limit_create="3/minute")) as client:
        token = hs256("quinn")
        created = [await _create(client, token) for _ in range(3)]
        assert [r.status_code for r in created] == [201, 201, 201]
        _limited(await _create(client, token), "create", 3)
        form = await client.post("/api/v1/uploads", files={"f": ("a", b"a")}, headers=bearer(token))
        _limited(form, "create", 3)
        # Another principal has its own count.
        assert (await _create(client, hs256("rosa"))).status_code == 201
        # The uploads already made still take their bytes.
        path = created[0].headers["Location"].removeprefix("http://testserver")
        for offset in range(3):
            response = await patch(client, path, offset, b"x", **bearer(token))
            assert response.status_code == 204


async def test_the_client_address_limit_believes_forwarded_for_only_from_trusted_proxies(
    settings: Settings,
) -> None:
    # httpx's in-process transport connects from 127.0.0.1.
    limited = _with(settings, rate_limit_ip="4/minute", trusted_proxies=["127.0.0.0/8"])
    async with in_process_client(limited) as client:
        token = hs256("sam")
        for _ in range(4):
            response = await client.get(
                "/api/v1/uploads", headers={**bearer(token), "X-Forwarded-For": "203.0.113.7"}
            )
            assert response.status_code == 200
        refused = await client.get(
            "/api/v1/uploads",
            headers={**bearer(token), "X-Forwarded-For": "203.0.113.7", "Origin": "https://app.example"},
        )
        _limited(refused, "ip", 4)
        # A browser can read the refusal: it passed through CORS.
        assert refused.headers["access-control-allow-origin"] in ("*", "https://app.example")
        assert "RateLimit" in refused.headers["access-control-expose-headers"]
        # Another client behind the same proxy is counted apart.
        other = await client.get(
            "/api/v1/uploads", headers={**bearer(token), "X-Forwarded-For": "203.0.113.8"}
        )
        assert other.status_code == 200
        # Health probes are never limited.
        assert (await client.get("/healthz", headers={"X-Forwarded-For": "203.0.113.7"})).status_code == 200


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(settings: Settings) -> None:
    async with in_process_client(_with(settings, rate_limit_ip="2/minute")) as client:
        token = hs256("tara")
        for address in ("198.51.100.1", "198.51.100.2"):
            response = await client.get(
                "/api/v1/uploads", headers={**bearer(token), "X-Forwarded-For": address}
            )
            assert response.status_code == 200
        # A spoofed header does not buy a fresh count: the peer is what counts.
        spoofed = await client.get(
            "/api/v1/uploads", headers={**bearer(token), "X-Forwarded-For": "198.51.100.3"}
        )
        _limited(spoofed, "ip", 2)


async def test_limits_are_shared_through_redis_by_every_process(settings: Settings, redis_url: str) -> None:
    import secrets

    shared = _with(
        settings,
        rate_limit_create="2/minute",
        redis_url=redis_url,
        redis_prefix=f"rate-{secrets.token_hex(4)}",
    )
    async with in_process_client(shared) as first, in_process_client(shared) as second:
        token = hs256("uma")
        assert (await _create(first, token)).status_code == 201
        assert (await _create(second, token)).status_code == 201
        _limited(await _create(first, token), "create", 2)
        _limited(await _create(second, token), "create", 2)


def test_a_malformed_rate_is_refused_at_startup() -> None:
    with pytest.raises(ValueError, match="not a rate"):
        Settings(rate_limit_create="lots")
