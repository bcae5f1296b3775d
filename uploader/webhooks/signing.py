"""Webhook signatures: HMAC-SHA256 over ``"<timestamp>.<body>"``, Stripe-style.

Signing the timestamp with the body lets a receiver refuse replays: it checks the
signature, then that the timestamp is recent.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Uploader-Signature"
TIMESTAMP_HEADER = "X-Uploader-Timestamp"
EVENT_HEADER = "X-Uploader-Event"
DELIVERY_HEADER = "X-Uploader-Delivery"


@functools.lru_cache(maxsize=16)
def _keyed(secret: str) -> hmac.HMAC:
    """The HMAC state after the key, copied for each signature (keying it anew for
    every delivery cost as much as the rest of the signature)."""
    return hmac.new(secret.encode(), digestmod=hashlib.sha256)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = _keyed(secret).copy()
    mac.update(b"%d." % timestamp)
    mac.update(body)
    return f"sha256={mac.hexdigest()}"


def verify(secret: str, timestamp: str, body: bytes, signed: str, tolerance: int = 300) -> bool:
    """What a receiver runs (the README shows the same, standalone)."""
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(signature(secret, int(timestamp), body), signed)
