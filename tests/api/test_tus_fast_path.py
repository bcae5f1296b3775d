"""The fast path for creation, HEAD and PATCH answers exactly as the FastAPI routes do."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from uploader.auth.dependencies import Principal, current_principal
from uploader.protocols.tus_fast_path import TusFastPath

TUS = {"Tus-Resumable": "1.0.0"}
OFFSET_STREAM = {**TUS, "Content-Type": "application/offset+octet-stream"}
# Headers that differ between two uploads made the same way (the request id too), and
# CORS's Vary, which the routes reached directly (without the outer layers) do not get.
VARYING = {"location", "upload-expires", "date", "content-length", "vary", "x-request-id"}


def fast_path_of(app: Any) -> TusFastPath:
    layer = app.middleware_stack
    while not isinstance(layer, TusFastPath):
        layer = layer.app
    return layer


def answer(response: httpx.Response) -> tuple[int, dict[str, str], Any]:
    headers = {k: v for k, v in response.headers.items() if k not in VARYING}
    body = response.json() if response.content else None
    if isinstance(body, dict):
        body.pop("instance", None)  # the request's path names its upload
        body.pop("request_id", None)  # one per request
    return response.status_code, headers, body


async def exchange(client: httpx.AsyncClient) -> list[tuple[int, dict[str, str], Any]]:
    """One conversation covering success and every kind of refusal the three methods give."""
    created = await client.post("/files/", headers={**TUS, "Upload-Length": "10"})
    path = httpx.URL(created.headers["Location"]).path
    responses = [
        created,
        await client.post("/files/", headers={"Upload-Length": "10"}),
        await client.post("/files/", headers={**TUS, "Upload-Length": "-1"}),
        await client.post(
            "/files/", headers={**TUS, "Upload-Length": "4", "Content-Type": "text/plain"}, content=b"abcd"
        ),
        await client.head("/files/" + "0" * 32, headers=TUS),
        await client.head("/files/not-an-id", headers=TUS),
        await client.patch(path, headers={**TUS, "Upload-Offset": "0"}, content=b"hello"),
        await client.patch(path, headers={**OFFSET_STREAM, "Upload-Offset": "3"}, content=b"hello"),
        await client.patch(path, headers={**OFFSET_STREAM, "Upload-Offset": "0"}, content=b"hello world"),
        await client.patch(path, headers={**OFFSET_STREAM, "Upload-Offset": "0"}, content=b"hello"),
        await client.head(path, headers=TUS),
    ]
    return [answer(r) for r in responses]


async def test_the_fast_path_answers_as_fastapi_does(app_client: httpx.AsyncClient) -> None:
    app = app_client.app  # type: ignore[attr-defined]
    served_fast = await exchange(app_client)
    fast_path = fast_path_of(app)

    async def through_fastapi(scope: Scope, receive: Receive, send: Send) -> None:
        await fast_path.app({**scope, "app": app}, receive, send)

    transport = httpx.ASGITransport(app=through_fastapi)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        served_by_routes = await exchange(client)
    assert served_fast == served_by_routes
    assert [status for status, _, _ in served_fast] == [201, 412, 400, 415, 404, 404, 415, 409, 413, 204, 200]


def test_an_endpoint_the_fast_path_cannot_call_is_refused_at_start() -> None:
    router = APIRouter()

    @router.post("/files/")
    async def create(request: Request, principal: Principal = Depends(current_principal)) -> Response:
        return Response(status_code=201)

    @router.head("/files/{upload_id}")
    @router.patch("/files/{upload_id}")
    async def renamed(
        request: Request, upload: str, principal: Principal = Depends(current_principal)
    ) -> Response:
        return Response(status_code=204)

    with pytest.raises(RuntimeError, match="renamed takes"):
        TusFastPath(lambda *_: None, router, "/files/", {})  # type: ignore[arg-type,return-value]
