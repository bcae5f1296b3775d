"""Serves the requests that make up almost all tus traffic without FastAPI's machinery.

Creation, HEAD and PATCH are FastAPI routes like every other (they define the HTTP
surface and its documentation). A busy server answers thousands of them a second, and
FastAPI's per-request work around an endpoint (matching through the included routers,
solving dependencies, its exception middleware) cost about a fifth of the CPU of a small
upload. This ASGI layer, in front of the router, matches those three by method and path
and awaits the same endpoint functions directly, resolving their parameters as FastAPI
would: the request, the ``upload_id`` path segment and the principal. Errors go to the
application's own exception handlers, so responses are the same either way; anything
else under the tus path (OPTIONS, DELETE, GET) goes through FastAPI as usual.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import APIRouter
from fastapi.routing import APIRoute
from starlette._utils import get_route_path
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from uploader.auth.dependencies import current_principal

Endpoint = Callable[..., Awaitable[Response]]
ExceptionHandler = Callable[[Request, Any], Response | Awaitable[Response]]

# (method, whether the path names an upload) -> the parameters the endpoint must take
_SERVED: dict[tuple[str, bool], tuple[str, ...]] = {
    ("POST", False): ("request", "principal"),
    ("HEAD", True): ("request", "upload_id", "principal"),
    ("PATCH", True): ("request", "upload_id", "principal"),
}


class TusFastPath:
    def __init__(
        self,
        app: ASGIApp,
        router: APIRouter,
        tus_path: str,
        exception_handlers: Mapping[Any, ExceptionHandler],
    ) -> None:
        self.app = app
        self.tus_path = tus_path
        self.exception_handlers = exception_handlers
        self.endpoints: dict[tuple[str, bool], Endpoint] = {}
        self.routes: dict[tuple[str, bool], APIRoute] = {}  # what the request metrics label
        for route in router.routes:
            if not isinstance(route, APIRoute):
                continue
            for method in route.methods or ():
                key = (method, route.path != tus_path)
                if key in _SERVED:
                    self.endpoints[key] = _checked(route.endpoint, _SERVED[key])
                    self.routes[key] = route
        missing = set(_SERVED) - set(self.endpoints)
        if missing:
            raise RuntimeError(f"the tus router has no endpoint for {sorted(missing)}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = get_route_path(scope)
            if path.startswith(self.tus_path):
                upload_id = path[len(self.tus_path) :]
                key = (scope["method"], bool(upload_id))
                endpoint = self.endpoints.get(key)
                if endpoint is not None and "/" not in upload_id:
                    scope["route"] = self.routes[key]
                    response = await self._serve(endpoint, upload_id, Request(scope, receive, send))
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _serve(self, endpoint: Endpoint, upload_id: str, request: Request) -> Response:
        try:
            principal = await current_principal(request)
            if upload_id:
                response = await endpoint(request, upload_id, principal=principal)
            else:
                response = await endpoint(request, principal=principal)
        except Exception as exc:
            handler = self._handler_for(exc)
            if handler is None:
                raise  # the server error handler logs it and answers 500
            handled = handler(request, exc)
            response = await handled if inspect.isawaitable(handled) else handled
        return response

    def _handler_for(self, exc: Exception) -> ExceptionHandler | None:
        for cls in type(exc).__mro__:
            if cls is Exception:
                return None  # unexpected errors stay with the outermost handler
            if cls in self.exception_handlers:
                return self.exception_handlers[cls]
        return None


def _checked(endpoint: Endpoint, expected: tuple[str, ...]) -> Endpoint:
    names = tuple(inspect.signature(endpoint).parameters)
    if names != expected:
        raise RuntimeError(f"{endpoint.__name__} takes {names}; the tus fast path passes {expected}")
    return endpoint
