"""Webhook signatures: HMAC-SHA256 over ``"<timestamp>.<body>"``, Stripe-style.

Signing the timestamp with the body lets a receiver refuse replays: it checks the
signature, then that the timestamp is recent.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Uploader-Signature"
TIMESTAMP_HEADER = "X-Uploader-Timestamp"
EVENT_HEADER = "X-Uploader-Event"
DELIVERY_HEADER = "X-Uploader-Delivery"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.digest(secret.encode(), b"%d.%s" % (timestamp, body), hashlib.sha256)
    return f"sha256={mac.hex()}"


def verify(secret: str, timestamp: str, body: bytes, signed: str, tolerance: int = 300) -> bool:
    """What a receiver runs (the README shows the same, standalone)."""
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(signature(secret, int(timestamp), body), signed)
