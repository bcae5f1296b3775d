"""JWTs: HS256 with a shared secret, RS256/ES256 from a JWKS; every defect of a token is a
401 or 403 with a stable code, a JWKS that is down a 503, never a 500 or an acceptance."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from pydantic import SecretStr

from tests.auth.tokens import SECRET, bearer, ec_key, hs256, jwks_server, rsa_key
from tests.support import TUS, in_process_client
from uploader.settings import Settings


def _with(settings: Settings, **changes: Any) -> Settings:
    return settings.model_copy(update=changes)


async def _status_code(client: httpx.AsyncClient, token: str) -> tuple[int, str]:
    response = await client.get("/api/v1/uploads", headers=bearer(token))
    code = response.json().get("code", "") if response.status_code != 200 else ""
    return response.status_code, code


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


async def test_a_valid_hs256_token_is_its_subject(settings: Settings) -> None:
    async with in_process_client(_with(settings, jwt_secret=SecretStr(SECRET))) as client:
        created = await client.post(
            "/files/", headers={**TUS, "Upload-Length": "3", **bearer(hs256("carol"))}
        )
        assert created.status_code == 201, created.text
        mine = await client.get("/api/v1/uploads", headers=bearer(hs256("carol")))
        theirs = await client.get("/api/v1/uploads", headers=bearer(hs256("dave")))
        assert [u["id"] for u in mine.json()["items"]] == [created.headers["Location"].rsplit("/", 1)[-1]]
        assert theirs.json()["items"] == []
        # Without a credential the server refuses: a JWT key is configured.
        anonymous = await client.get("/api/v1/uploads")
        assert anonymous.status_code == 401
        assert anonymous.json()["code"] == "auth.unauthorized"
        assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")


# Every token below carries the right issuer and audience unless the defect is in them.
GOOD = {"iss": "https://app.example", "aud": "uploader"}
DEFECTIVE_TOKENS: list[tuple[str, Any, str]] = [
    ("garbled base64", lambda: "eyJ!!!.@@@.###", "auth.invalid_token"),
    (
        "wrong signature",
        lambda: hs256(secret="another-secret-of-at-least-32-bytes!!", **GOOD),
        "auth.invalid_token",
    ),
    (
        "alg none",
        lambda: f"{_b64({'alg': 'none'})}.{_b64({'sub': 'alice', 'exp': int(time.time()) + 60, **GOOD})}.",
        "auth.invalid_token",
    ),
    ("expired", lambda: hs256(ttl=-120, **GOOD), "auth.token_expired"),
    ("not yet valid", lambda: hs256(nbf=int(time.time()) + 600, **GOOD), "auth.token_expired"),
    ("wrong issuer", lambda: hs256(iss="https://elsewhere.example", aud="uploader"), "auth.invalid_token"),
    ("wrong audience", lambda: hs256(iss="https://app.example", aud="someone-else"), "auth.invalid_token"),
    ("20 KB token", lambda: hs256(padding="x" * 20_000, **GOOD), "auth.invalid_token"),
    ("sub an object", lambda: hs256(sub={"id": 1}, **GOOD), "auth.invalid_token"),
    ("max_size a string", lambda: hs256(uploader={"max_size": "10"}, **GOOD), "auth.invalid_token"),
    ("types not a list", lambda: hs256(uploader={"types": "image/*"}, **GOOD), "auth.invalid_token"),
    ("unknown scope", lambda: hs256(scope="upload superuser", **GOOD), "auth.invalid_token"),
    ("max_files without jti", lambda: hs256(uploader={"max_files": 2}, **GOOD), "auth.invalid_token"),
    ("no exp", lambda: hs256(exp=None, **GOOD), "auth.invalid_token"),
    ("not a bearer scheme", lambda: None, "auth.unauthorized"),
]


@pytest.mark.parametrize(("name", "make", "code"), DEFECTIVE_TOKENS, ids=[t[0] for t in DEFECTIVE_TOKENS])
async def test_a_defective_token_is_refused_with_a_stable_code(
    settings: Settings, name: str, make: Any, code: str
) -> None:
    configured = _with(
        settings, jwt_secret=SecretStr(SECRET), jwt_issuer=GOOD["iss"], jwt_audience=GOOD["aud"]
    )
    async with in_process_client(configured) as client:
        assert await _status_code(client, hs256(**GOOD)) == (200, "")
        token = make()
        if token is None:
            response = await client.get(
                "/api/v1/uploads", headers={"Authorization": f"Basic {hs256(**GOOD)}"}
            )
            status, got = response.status_code, response.json()["code"]
        else:
            status, got = await _status_code(client, token)
        assert (status, got) == (401, code)


async def test_rs256_and_es256_tokens_from_a_jwks_are_accepted_and_hmac_tokens_are_not(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from uploader.auth import tokens

    monkeypatch.setattr(tokens, "JWKS_REFETCH_SECONDS", 0.5)
    rsa_signing, ec_signing = rsa_key("rsa-1"), ec_key("ec-1")
    with jwks_server(rsa_signing, ec_signing) as jwks:
        async with in_process_client(_with(settings, jwt_jwks_url=jwks.url)) as client:
            assert await _status_code(client, rsa_signing.sign("erin")) == (200, "")
            assert await _status_code(client, ec_signing.sign("erin")) == (200, "")
            assert jwks.fetches == 1  # cached
            # Algorithm confusion: an HMAC token, its "secret" the server's public key.
            public_pem = rsa_signing.private.public_key().public_bytes(
                encoding=serialization.Encoding.PEM, format=serialization.PublicFormat.SubjectPublicKeyInfo
            )
            confused = _hmac_with_key(public_pem)
            assert await _status_code(client, confused) == (401, "auth.invalid_token")
            # A kid the JWKS does not have: refused, after one fetch that found nothing.
            await asyncio.sleep(0.6)
            stranger = rsa_key("rsa-unknown")
            assert await _status_code(client, stranger.sign("erin")) == (401, "auth.invalid_token")
            assert jwks.fetches == 2
            # A second unknown kid right away does not send for the keys again (rate limited).
            assert await _status_code(client, rsa_key("rsa-other").sign("erin")) == (
                401,
                "auth.invalid_token",
            )
            assert jwks.fetches == 2
            # A key signed with one kid's key but naming another kid: a wrong signature.
            forged = stranger.sign("erin", kid="rsa-1")
            assert await _status_code(client, forged) == (401, "auth.invalid_token")


def _hmac_with_key(key: bytes) -> str:
    """An HS256 token whose HMAC key is ``key`` (PyJWT itself refuses to make one)."""
    import hashlib
    import hmac

    header = _b64({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"})
    payload = _b64({"sub": "erin", "exp": int(time.time()) + 60})
    signature = hmac.new(key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{base64.urlsafe_b64encode(signature).decode().rstrip('=')}"


async def test_a_rotated_key_is_fetched_when_a_token_names_it(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from uploader.auth import tokens

    monkeypatch.setattr(tokens, "JWKS_REFETCH_SECONDS", 0.2)
    old, new = rsa_key("2026-11"), rsa_key("2026-12")
    with jwks_server(old) as jwks:
        async with in_process_client(_with(settings, jwt_jwks_url=jwks.url)) as client:
            assert await _status_code(client, old.sign()) == (200, "")
            jwks.keys = [old, new]  # the issuer rotates
            await asyncio.sleep(0.3)
            assert await _status_code(client, new.sign()) == (200, "")
            assert jwks.fetches == 2


async def test_a_jwks_that_is_down_is_503_never_an_accepted_token(settings: Settings) -> None:
    signing = rsa_key("k1")
    with jwks_server(signing) as jwks:
        url = jwks.url
    # The server is gone: nothing listens at the URL.
    async with in_process_client(_with(settings, jwt_jwks_url=url)) as client:
        response = await client.get("/api/v1/uploads", headers=bearer(signing.sign()))
        assert response.status_code == 503
        assert response.json()["code"] == "auth.unavailable"
        assert response.headers["Retry-After"]
        created = await client.post(
            "/files/", headers={**TUS, "Upload-Length": "1", **bearer(signing.sign())}
        )
        assert created.status_code == 503


async def test_an_hmac_token_with_only_a_jwks_configured_is_refused(settings: Settings) -> None:
    with jwks_server(rsa_key("k1")) as jwks:
        async with in_process_client(_with(settings, jwt_jwks_url=jwks.url)) as client:
            assert await _status_code(client, hs256()) == (401, "auth.invalid_token")
            assert jwks.fetches == 0  # refused by its algorithm, before any key was needed


async def test_a_token_accepted_before_is_refused_once_it_expires(settings: Settings) -> None:
    """Verified tokens are remembered, but only until their exp."""
    configured = _with(settings, jwt_secret=SecretStr(SECRET), jwt_leeway_seconds=0)
    async with in_process_client(configured) as client:
        token = hs256(ttl=2)
        assert await _status_code(client, token) == (200, "")
        assert await _status_code(client, token) == (200, "")
        await asyncio.sleep(2.2)
        assert await _status_code(client, token) == (401, "auth.token_expired")


async def test_keys_fetched_before_serve_while_the_jwks_is_down_and_new_kids_wait(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from uploader.auth import tokens

    monkeypatch.setattr(tokens, "JWKS_REFETCH_SECONDS", 0.2)
    known = ec_key("known")
    with jwks_server(known) as jwks:
        async with in_process_client(
            _with(settings, jwt_jwks_url=jwks.url, jwt_jwks_cache_seconds=0.3)
        ) as client:
            assert await _status_code(client, known.sign()) == (200, "")
            jwks.stop()
            await asyncio.sleep(0.4)  # the cache is due: the next token tries to fetch, and fails
            assert await _status_code(client, known.sign()) == (200, "")
            # A kid it has never seen may be a key published since: it cannot say no.
            assert await _status_code(client, ec_key("newer").sign()) == (503, "auth.unavailable")
