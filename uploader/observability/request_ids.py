"""Request ids: one per request, taken from the client's ``X-Request-ID`` when it is sane
and made here otherwise, returned on every response, in every problem document and in
every log line of the request, and passed on to the Celery task and the webhook delivery
the request caused."""

from __future__ import annotations

import re
from contextvars import ContextVar

from uploader.kit.ids import CountedIds

REQUEST_ID_HEADER = "X-Request-ID"
TASK_REQUEST_ID = "uploader_request_id"  # the Celery message header that carries it
MAX_LENGTH = 128
# What ids in the wild look like (UUIDs, tracing ids, ``Root=1-…;Parent=…``), and nothing
# that could end a header line or a log field.
_SANE = re.compile(rb"[A-Za-z0-9._:;=+/@-]{1,%d}" % MAX_LENGTH)

current_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


new_request_id = CountedIds(counter_digits=16)  # 32 hex digits


def accepted_or_new(raw: bytes | None) -> str:
    """The client's id if it is sane, else a new one: a hostile value is replaced, never
    echoed."""
    if raw is not None and _SANE.fullmatch(raw):
        return raw.decode("ascii")
    return new_request_id()


def sane_or_none(value: object) -> str | None:
    """An id received from elsewhere (a task's headers), if it is one."""
    if isinstance(value, str) and _SANE.fullmatch(value.encode("ascii", "replace")):
        return value
    return None
