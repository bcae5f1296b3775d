"""Scopes on every route, credentials in a query string on GET only, API keys kept in the
database (revocation within seconds), the bootstrap keys, and the admin's view."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from pydantic import SecretStr

from tests.api.helpers import create, patch, upload_id
from tests.auth.tokens import SECRET, bearer, hs256
from tests.support import TUS, in_process_client
from uploader.auth import api_keys
from uploader.auth.principal import ADMIN, OWNER_SCOPES, READ, UPLOAD
from uploader.db.engine import Database
from uploader.settings import Settings


def _with(settings: Settings, **changes: Any) -> Settings:
    return settings.model_copy(update={"jwt_secret": SecretStr(SECRET), **changes})


async def _uploaded(client: httpx.AsyncClient, token: str, data: bytes = b"hello") -> str:
    path = await create(client, len(data), **bearer(token))
    response = await patch(client, path, 0, data, **bearer(token))
    assert response.status_code == 204, response.text
    return upload_id(path)


def _forbidden(response: httpx.Response) -> None:
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "auth.forbidden"


async def test_each_scope_opens_its_routes_and_no_others(settings: Settings) -> None:
    async with in_process_client(_with(settings)) as client:
        uploader = hs256("frank", scope="upload")
        reader = hs256("frank", scope="read")
        deleter = hs256("frank", scope="delete")
        uid = await _uploaded(client, uploader)
        # upload: no reading
        _forbidden(await client.get(f"/api/v1/uploads/{uid}", headers=bearer(uploader)))
        _forbidden(await client.get(f"/api/v1/uploads/{uid}/content", headers=bearer(uploader)))
        _forbidden(await client.get("/api/v1/events", headers=bearer(uploader)))
        # read: no creating, appending or terminating
        _forbidden(await client.post("/files/", headers={**TUS, "Upload-Length": "1", **bearer(reader)}))
        form = await client.post("/api/v1/uploads", files={"f": ("a.txt", b"x")}, headers=bearer(reader))
        _forbidden(form)
        unfinished = await create(client, 10, **bearer(uploader))
        _forbidden(await patch(client, unfinished, 0, b"x", **bearer(reader)))
        _forbidden(await client.delete(unfinished, headers={**TUS, **bearer(reader)}))
        status = await client.get(f"/api/v1/uploads/{uid}", headers=bearer(reader))
        assert status.status_code == 200
        content = await client.get(f"/api/v1/uploads/{uid}/content", headers=bearer(reader))
        assert content.content == b"hello"
        # deleting a finished upload needs delete; abandoning an unfinished one, upload
        _forbidden(await client.delete(f"/api/v1/uploads/{uid}", headers=bearer(uploader)))
        _forbidden(await client.delete(f"/files/{uid}", headers={**TUS, **bearer(uploader)}))
        abandoned = await client.delete(unfinished, headers={**TUS, **bearer(uploader)})
        assert abandoned.status_code == 204
        deleted = await client.delete(f"/api/v1/uploads/{uid}", headers=bearer(deleter))
        assert deleted.status_code == 204
        gone = await client.get(f"/api/v1/uploads/{uid}", headers=bearer(reader))
        assert gone.status_code == 404
        listed = await client.get("/api/v1/uploads", headers=bearer(reader))
        assert [u["id"] for u in listed.json()["items"]] == []  # neither the deleted nor the abandoned


async def test_a_token_without_a_scope_claim_may_upload_and_read_but_not_delete(settings: Settings) -> None:
    async with in_process_client(_with(settings)) as client:
        token = hs256("gina")
        uid = await _uploaded(client, token)
        assert (await client.get(f"/api/v1/uploads/{uid}", headers=bearer(token))).status_code == 200
        _forbidden(await client.delete(f"/api/v1/uploads/{uid}", headers=bearer(token)))


async def test_admin_sees_every_principals_uploads_and_others_may_not_ask(settings: Settings) -> None:
    async with in_process_client(_with(settings)) as client:
        hers = await _uploaded(client, hs256("hana"))
        his = await _uploaded(client, hs256("ivan"))
        admin = hs256("ops", scope="read admin")
        listed = await client.get("/api/v1/uploads", params={"owner": "hana"}, headers=bearer(admin))
        assert [u["id"] for u in listed.json()["items"]] == [hers]
        everyone = await client.get("/api/v1/uploads", params={"owner": "*"}, headers=bearer(admin))
        assert {u["id"] for u in everyone.json()["items"]} == {hers, his}
        status = await client.get(f"/api/v1/uploads/{his}", headers=bearer(admin))
        assert status.status_code == 200
        _forbidden(
            await client.get("/api/v1/uploads", params={"owner": "hana"}, headers=bearer(hs256("ivan")))
        )
        # Without admin, another principal's upload does not exist.
        theirs = await client.get(f"/api/v1/uploads/{hers}", headers=bearer(hs256("ivan")))
        assert theirs.status_code == 404


async def test_access_token_in_the_query_works_on_get_routes_only(settings: Settings) -> None:
    async with in_process_client(_with(settings)) as client:
        token = hs256("jack")
        uid = await _uploaded(client, token)
        content = await client.get(f"/api/v1/uploads/{uid}/content", params={"access_token": token})
        assert content.status_code == 200
        assert content.content == b"hello"
        async with client.stream(
            "GET", f"/api/v1/uploads/{uid}/events", params={"access_token": token}
        ) as events:
            assert events.status_code == 200
            assert events.headers["content-type"].startswith("text/event-stream")
        posted = await client.post(
            "/files/", params={"access_token": token}, headers={**TUS, "Upload-Length": "1"}
        )
        assert posted.status_code == 401
        unfinished = await create(client, 10, **bearer(token))
        patched = await patch(client, f"{unfinished}?access_token={token}", 0, b"x")
        assert patched.status_code == 401


async def _make_key(url: str, name: str, **options: Any) -> tuple[str, str]:
    db = Database(url)
    try:
        record, key = await db.run(
            lambda c: api_keys.create(
                c, name, options.pop("principal", name), options.pop("scopes", OWNER_SCOPES), **options
            )
        )
    finally:
        await db.dispose()
    return record.id, key


async def _revoke(url: str, key_id: str) -> None:
    db = Database(url)
    try:
        assert await db.run(lambda c: api_keys.revoke(c, key_id))
    finally:
        await db.dispose()


async def test_database_keys_authenticate_and_revocation_takes_effect_within_the_cache_time(
    settings: Settings, database_url: str
) -> None:
    keyed = settings.model_copy(update={"api_key_cache_seconds": 0.5})
    async with in_process_client(keyed) as client:
        # No key yet: the embedded default is open.
        assert (await client.get("/api/v1/uploads")).status_code == 200
        key_id, key = await _make_key(database_url, "kim-laptop", principal="kim")
        assert key.startswith(f"upk_{key_id}_")
        assert len(key) > 50
        await asyncio.sleep(0.6)
        # A key exists now: callers without one are refused.
        refused = await client.get("/api/v1/uploads")
        assert refused.status_code == 401
        uid = await _uploaded_with_key(client, key)
        by_header = await client.get(f"/api/v1/uploads/{uid}", headers={"X-API-Key": key})
        assert by_header.status_code == 200
        assert by_header.json()["id"] == uid
        wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
        assert (await client.get("/api/v1/uploads", headers={"X-API-Key": wrong})).status_code == 401
        await _revoke(database_url, key_id)
        await asyncio.sleep(0.6)
        revoked = await client.get("/api/v1/uploads", headers=bearer(key))
        assert revoked.status_code == 401
        assert revoked.json()["code"] == "auth.unauthorized"


async def _uploaded_with_key(client: httpx.AsyncClient, key: str) -> str:
    path = await create(client, 5, **bearer(key))
    assert (await patch(client, path, 0, b"hello", **bearer(key))).status_code == 204
    return upload_id(path)


async def test_a_database_key_has_the_scopes_it_was_made_with(settings: Settings, database_url: str) -> None:
    _, reader = await _make_key(database_url, "dashboard", scopes=frozenset({READ}))
    _, admin = await _make_key(database_url, "ops", scopes=frozenset({READ, ADMIN, UPLOAD}))
    async with in_process_client(settings) as client:
        _forbidden(await client.post("/files/", headers={**TUS, "Upload-Length": "1", **bearer(reader)}))
        mine = await _uploaded_with_key(client, admin)
        listed = await client.get("/api/v1/uploads", params={"owner": "*"}, headers=bearer(admin))
        assert mine in [u["id"] for u in listed.json()["items"]]


async def test_bootstrap_keys_still_work_beside_tokens(settings: Settings) -> None:
    both = _with(settings, api_keys={"boot-key-1": "lena"})
    async with in_process_client(both) as client:
        uid = await _uploaded_with_key(client, "boot-key-1")
        # The token for the same subject is the same principal.
        status = await client.get(f"/api/v1/uploads/{uid}", headers=bearer(hs256("lena")))
        assert status.status_code == 200
        assert (await client.get("/api/v1/uploads", headers=bearer("boot-key-2"))).status_code == 401


async def test_auth_required_says_so_either_way(settings: Settings) -> None:
    async with in_process_client(settings.model_copy(update={"auth_required": True})) as client:
        refused = await client.get("/api/v1/uploads")
        assert refused.status_code == 401  # no credential source at all, and still closed
    open_too = settings.model_copy(update={"auth_required": False, "api_keys": {"boot-key-9": "mona"}})
    async with in_process_client(open_too) as client:
        assert (await client.get("/api/v1/uploads")).status_code == 200  # anonymous beside keys
        mine = await _uploaded_with_key(client, "boot-key-9")
        anonymous = await client.get(f"/api/v1/uploads/{mine}")
        assert anonymous.status_code == 404  # the key's uploads are its own


async def test_another_authorization_scheme_is_not_taken_for_ours(settings: Settings) -> None:
    """Behind a proxy that adds Basic credentials, an open server stays open; one that
    needs ours still asks for them."""
    basic = {"Authorization": "Basic dXNlcjpwYXNz"}
    async with in_process_client(settings) as client:
        assert (await client.get("/api/v1/uploads", headers=basic)).status_code == 200
    async with in_process_client(_with(settings)) as client:
        refused = await client.get("/api/v1/uploads", headers=basic)
        assert refused.status_code == 401
        assert refused.json()["code"] == "auth.unauthorized"
