"""``X-HTTP-Method-Override`` for clients and proxies that only speak GET and POST."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

OVERRIDABLE = frozenset({"PATCH", "DELETE", "HEAD", "GET", "OPTIONS"})


class MethodOverrideMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            for name, value in scope["headers"]:
                if name == b"x-http-method-override":
                    method = value.decode("latin-1").strip().upper()
                    if method in OVERRIDABLE:
                        scope = dict(scope, method=method)
                    break
        await self.app(scope, receive, send)
