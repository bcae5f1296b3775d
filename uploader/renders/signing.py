"""Render URLs are signed: HMAC-SHA256 with ``UPLOADER_RENDER_KEY`` over the exact path
(``/api/v1/uploads/{id}/render/{ops}``, as sent, never normalised), base64url without
padding, in ``?sig=``. The server compares the path it received, byte for byte, so an
edited, re-encoded or reordered URL is refused."""

from __future__ import annotations

import base64
import hashlib
import hmac

PREFIX = "/api/v1/uploads/"


def render_path(upload_id: str, ops: str) -> str:
    return f"{PREFIX}{upload_id}/render/{ops}"


def signature(key: str, path: str) -> str:
    digest = hmac.new(key.encode(), path.encode("latin-1"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def signed_url(key: str, upload_id: str, ops: str, base: str = "") -> str:
    path = render_path(upload_id, ops)
    return f"{base.rstrip('/')}{path}?sig={signature(key, path)}"


def valid(key: str, path: str, sig: str | None) -> bool:
    if not sig:
        return False
    return hmac.compare_digest(signature(key, path).encode(), sig.encode("latin-1", "replace"))
