"""Quotas per principal: bytes held (a declared length counts from creation) and unfinished
uploads at once; what is removed gives its bytes back; a key's own quota wins; and
``GET /api/v1/usage`` shows use beside quota."""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import SecretStr

from tests.api.helpers import patch
from tests.auth.test_scopes_and_keys import _make_key
from tests.auth.tokens import SECRET, bearer, hs256
from tests.support import TUS, in_process_client, stored_objects
from uploader.settings import Settings


def _with(settings: Settings, **changes: Any) -> Settings:
    return settings.model_copy(update={"jwt_secret": SecretStr(SECRET), **changes})


async def _create(client: httpx.AsyncClient, token: str, length: int) -> httpx.Response:
    return await client.post("/files/", headers={**TUS, "Upload-Length": str(length), **bearer(token)})


def _over(response: httpx.Response, which: str) -> None:
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["code"] == "quota.exceeded"
    assert body["quota"] == which


async def _usage(client: httpx.AsyncClient, token: str) -> dict[str, Any]:
    response = await client.get("/api/v1/usage", headers=bearer(token))
    assert response.status_code == 200, response.text
    usage: dict[str, Any] = response.json()
    return usage


async def test_declared_bytes_count_from_creation_and_removal_gives_them_back(settings: Settings) -> None:
    async with in_process_client(_with(settings, quota_bytes=1000)) as client:
        token = hs256("maya")
        first = await _create(client, token, 600)
        assert first.status_code == 201
        _over(await _create(client, token, 500), "bytes")  # 600 declared + 500 > 1000
        assert (await _usage(client, token))["bytes"] == {"used": 600, "limit": 1000}
        # Another principal has a quota of its own.
        assert (await _create(client, hs256("noah"), 900)).status_code == 201
        location = first.headers["Location"].removeprefix("http://testserver")
        assert (await client.delete(location, headers={**TUS, **bearer(token)})).status_code == 204
        assert (await _usage(client, token))["bytes"]["used"] == 0
        assert (await _create(client, token, 1000)).status_code == 201
        # The form protocol is held to it too; what it stored goes again.
        before = stored_objects(settings)
        form = await client.post("/api/v1/uploads", files={"f": ("a.bin", b"z" * 10)}, headers=bearer(token))
        _over(form, "bytes")
        assert stored_objects(settings) == before


async def test_unfinished_uploads_at_once_are_limited_and_a_finished_one_frees_its_place(
    settings: Settings,
) -> None:
    async with in_process_client(_with(settings, quota_active_uploads=2)) as client:
        token = hs256("olga")
        first = await _create(client, token, 3)
        assert (await _create(client, token, 3)).status_code == 201
        _over(await _create(client, token, 3), "active_uploads")
        path = first.headers["Location"].removeprefix("http://testserver")
        assert (await patch(client, path, 0, b"abc", **bearer(token))).status_code == 204
        usage = await _usage(client, token)
        assert usage["active_uploads"] == {"used": 1, "limit": 2}
        assert (await _create(client, token, 3)).status_code == 201


async def test_a_keys_own_quota_overrides_the_default(settings: Settings, database_url: str) -> None:
    _, small = await _make_key(database_url, "small", quota_bytes=100)
    _, large = await _make_key(database_url, "large", quota_bytes=10_000)
    async with in_process_client(settings.model_copy(update={"quota_bytes": 1000})) as client:
        _over(await _create(client, small, 101), "bytes")
        assert (await _create(client, large, 5000)).status_code == 201
        usage = await _usage(client, large)
        assert usage["bytes"] == {"used": 5000, "limit": 10_000}
        assert usage["principal"] == "large"


async def test_usage_reports_the_tokens_own_limits(settings: Settings) -> None:
    async with in_process_client(_with(settings)) as client:
        token = hs256("pia", jti="t-1", uploader={"max_size": 2048, "types": ["image/*"], "max_files": 5})
        usage = await _usage(client, token)
        assert usage["token"] == {"max_size": 2048, "types": ["image/*"], "max_files": 5}
        assert usage["max_upload_size"] == 2048
        assert usage["bytes"] == {"used": 0, "limit": None}
        assert usage["scopes"] == ["read", "upload"]


async def _recount(url: str) -> dict[str, tuple[int, int]]:
    """What each owner holds, summed from the upload rows, against the usage rows."""
    from sqlalchemy import select

    from uploader.db.engine import Database
    from uploader.db.models import principal_usage, uploads

    db = Database(url)
    try:
        rows = await db.run(lambda c: list(c.execute(select(uploads))))
        kept = await db.run(lambda c: list(c.execute(select(principal_usage))))
    finally:
        await db.dispose()
    summed: dict[str, list[int]] = {}
    for row in rows:
        held = (
            0
            if row.state in ("expired", "terminated") or row.bytes_removed
            else (row.length if row.length is not None else row.offset)
        )
        active = 1 if row.state in ("created", "receiving") else 0
        totals = summed.setdefault(row.owner, [0, 0])
        totals[0] += held
        totals[1] += active
    assert {r.owner: (r.bytes, r.active_uploads) for r in kept if r.bytes or r.active_uploads} == {
        owner: (b, a) for owner, (b, a) in summed.items() if b or a
    }
    return {owner: (b, a) for owner, (b, a) in summed.items()}


async def test_usage_rows_agree_with_the_uploads_through_every_change(
    settings: Settings, database_url: str
) -> None:
    from tests.images import zip_archive

    async with in_process_client(_with(settings, quota_bytes=10**9)) as client:
        token = hs256("vic", uploader={"types": ["image/png"]})
        free = hs256("vic-too")
        created = await _create(client, free, 10)  # unfinished
        path = created.headers["Location"].removeprefix("http://testserver")
        assert (await patch(client, path, 0, b"01234", **bearer(free))).status_code == 204
        finished = await _create(client, free, 3)
        done = finished.headers["Location"].removeprefix("http://testserver")
        assert (await patch(client, done, 0, b"abc", **bearer(free))).status_code == 204
        deferred = await client.post("/files/", headers={**TUS, "Upload-Defer-Length": "1", **bearer(free)})
        later = deferred.headers["Location"].removeprefix("http://testserver")
        assert (await patch(client, later, 0, b"xyz", **bearer(free))).status_code == 204
        form = await client.post("/api/v1/uploads", files={"f": ("f.txt", b"form!")}, headers=bearer(free))
        assert form.status_code == 201
        assert (await client.delete(path, headers={**TUS, **bearer(free)})).status_code == 204
        usage = await _recount(database_url)
        assert usage["vic-too"] == (3 + 3 + 5, 1)  # finished, deferred so far, form; one unfinished
        # A type the token does not allow: failed, its bytes removed, nothing held.
        client.headers.update(bearer(token))
        from tests.api.helpers import settled_status, upload_bytes, upload_id
        from tests.support import metadata

        smuggled = await upload_bytes(
            client, zip_archive(), **{"Upload-Metadata": metadata(filetype="image/png")}
        )
        assert (await settled_status(client, upload_id(smuggled)))["state"] == "failed"
        usage = await _recount(database_url)
        assert usage["vic"] == (0, 0)
        assert (await _usage(client, free))["bytes"]["used"] == 11
