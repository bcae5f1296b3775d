"""tus steps over an httpx client, shared by the API tests."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.support import PATCH_HEADERS, TUS


async def create(client: httpx.AsyncClient, length: int | None, **headers: str) -> str:
    extra = {"Upload-Length": str(length)} if length is not None else {"Upload-Defer-Length": "1"}
    response = await client.post("/files/", headers={**TUS, **extra, **headers})
    assert response.status_code == 201, response.text
    location = response.headers["Location"]
    assert location.startswith("http://testserver/files/")
    return location.removeprefix("http://testserver")


async def patch(
    client: httpx.AsyncClient, path: str, offset: int, data: bytes, **headers: str
) -> httpx.Response:
    return await client.patch(
        path, content=data, headers={**PATCH_HEADERS, "Upload-Offset": str(offset), **headers}
    )


async def head(client: httpx.AsyncClient, path: str) -> httpx.Response:
    return await client.head(path, headers=TUS)


async def offset_of(client: httpx.AsyncClient, path: str) -> int:
    response = await head(client, path)
    assert response.status_code == 200
    return int(response.headers["Upload-Offset"])


async def upload_bytes(client: httpx.AsyncClient, data: bytes, chunk: int = 1000, **headers: str) -> str:
    path = await create(client, len(data), **headers)
    for start in range(0, len(data), chunk):
        response = await patch(client, path, start, data[start : start + chunk])
        assert response.status_code == 204, response.text
    return path


def upload_id(path: str) -> str:
    return path.rsplit("/", 1)[-1]


async def settled_status(client: httpx.AsyncClient, uid: str) -> dict[str, Any]:
    """The upload's status once processing has ended (ready, failed or rejected), within 30 s."""
    async with asyncio.timeout(30):
        while True:
            status: dict[str, Any] = (await client.get(f"/api/v1/uploads/{uid}")).json()
            if status["state"] in ("ready", "failed", "rejected"):
                return status
            await asyncio.sleep(0.05)
