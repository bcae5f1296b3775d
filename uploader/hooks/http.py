"""Blocking hooks over HTTP: a signed POST to ``UPLOADER_HOOK_URL``, answered with JSON.

``pre-create`` comes before anything is stored, on every protocol; ``pre-finish`` after
the last byte is stored and sniffed, before the upload becomes ``received``;
``pre-terminate`` before an upload is removed on request.

``200 {}`` accepts; ``{"reject": {"status": 4xx, "message": "…"}}`` refuses, and the
client gets that status and message with the code ``hook.rejected``; at ``pre-create``,
``{"metadata": {…}}`` merges metadata into the new upload; a refusal at ``pre-finish``
ends the upload ``failed`` without its bytes. Anything else (no answer
within the timeout, a non-2xx status, a body that is not that JSON) fails closed:
``503 hook.unavailable``. The caller holds no lock and no transaction while it waits.
"""

from __future__ import annotations

import json
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from uploader.kit.errors import ProblemError
from uploader.kit.logging import get_logger
from uploader.observability import metrics
from uploader.observability.request_ids import REQUEST_ID_HEADER, current_request_id
from uploader.settings import HOOK_EVENTS, Settings
from uploader.webhooks.signing import EVENT_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, signature

if TYPE_CHECKING:
    import httpx
    from starlette.requests import Request

    from uploader.db.models import Upload

log = get_logger(__name__)

# The request being served, for the hook's ``request`` member: set with the principal.
current_request: ContextVar[Request | None] = ContextVar("current_request", default=None)
# Headers a hook never sees: credentials.
PRIVATE_HEADERS = frozenset({"authorization", "cookie", "x-api-key", "proxy-authorization"})


class _Reject(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    status: StrictInt = Field(ge=400, le=499)
    message: StrictStr = Field(max_length=2000)


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    reject: _Reject | None = None
    metadata: dict[StrictStr, StrictStr] | None = Field(default=None, max_length=64)


@dataclass(frozen=True)
class HookAnswer:
    metadata: dict[str, str] = field(default_factory=dict)


def _unavailable(event: str, why: str) -> ProblemError:
    log.warning("hook.unavailable", hook=event, error=why[:300])
    return ProblemError(
        "hook.unavailable", f"the {event} hook did not answer usably: {why[:200]}", {"Retry-After": "5"}
    )


class HttpHooks:
    def __init__(self, settings: Settings, client_address: Any) -> None:
        assert settings.hook_url is not None
        self.url = settings.hook_url
        self.secret = settings.hook_signing_secret
        self.events = frozenset(settings.hook_events)
        self.timeout = settings.hook_timeout_seconds
        self.tus_path = settings.tus_path
        self.client_address = client_address  # (ASGI scope) -> the client's address
        self._client: httpx.AsyncClient | None = None

    def wants(self, event: str) -> bool:
        return event in self.events

    def _request_facts(self) -> dict[str, Any] | None:
        request = current_request.get()
        if request is None:
            return None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in PRIVATE_HEADERS}
        return {"client": self.client_address(request.scope), "method": request.method, "headers": headers}

    async def ask(self, event: str, upload: Upload, principal: str) -> HookAnswer:
        """The hook's answer for ``upload``; raises ``hook.rejected`` or ``hook.unavailable``."""
        begun = time.perf_counter()
        outcome = "unavailable"
        try:
            answer = await self._ask(event, upload, principal)
            outcome = "accepted"
            return answer
        except ProblemError as exc:
            outcome = "rejected" if exc.code == "hook.rejected" else "unavailable"
            raise
        finally:
            metrics.HOOK_CALLS.labels(event, outcome).inc()
            metrics.HOOK_DURATION.labels(event).observe(time.perf_counter() - begun)

    async def _ask(self, event: str, upload: Upload, principal: str) -> HookAnswer:
        import httpx

        from uploader.uploads.schemas import UploadStatus

        document = {
            "type": event,
            "upload": UploadStatus.of(upload, self.tus_path).model_dump(mode="json"),
            "principal": principal,
            "request": self._request_facts(),
        }
        body = json.dumps(document, separators=(",", ":")).encode()
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            EVENT_HEADER: event,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: signature(self.secret, timestamp, body),
        }
        request_id = current_request_id.get()
        if request_id is not None:
            headers[REQUEST_ID_HEADER] = request_id
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout, follow_redirects=False)
        begun = time.monotonic()
        try:
            response = await self._client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise _unavailable(event, f"{type(exc).__name__}: {exc}") from None
        if not 200 <= response.status_code < 300:
            raise _unavailable(event, f"it answered {response.status_code}")
        try:
            answer = _Answer.model_validate(response.json())
        except (ValueError, ValidationError) as exc:
            raise _unavailable(
                event, f"its answer is not a hook answer: {str(exc).splitlines()[0]}"
            ) from None
        log.info("hook.answered", hook=event, upload_id=upload.id, seconds=round(time.monotonic() - begun, 3))
        if answer.reject is not None:
            raise ProblemError("hook.rejected", answer.reject.message, status=answer.reject.status)
        if answer.metadata and event != "pre-create":
            raise _unavailable(event, "metadata can only be changed at pre-create")
        return HookAnswer(dict(answer.metadata or {}))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


__all__ = ["HOOK_EVENTS", "HookAnswer", "HttpHooks", "current_request"]
