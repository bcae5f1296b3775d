"""Webhook signatures as a receiver checks them: the README's receiver code (HMAC-SHA256
over ``"<timestamp>.<body>"``, written against ``hmac`` directly, run as the README has
it) accepts what we sign, for every delivery of one secret and for several secrets in
turn."""

from __future__ import annotations

import hashlib
import hmac
import time

from tests.support import readme_function
from uploader.webhooks.signing import signature, verify


def test_each_signature_is_of_its_own_timestamp_and_body_alone() -> None:
    receiver_verify = readme_function("import hashlib, hmac, time", "verify")
    now = int(time.time())
    deliveries = [(secret, now + n, b'{"n":%d}' % n) for n in range(5) for secret in ("one", "two" * 40)]
    for secret, timestamp, body in deliveries + deliveries:  # a second time: nothing carried over
        signed = signature(secret, timestamp, body)
        headers = {"X-Uploader-Timestamp": str(timestamp), "X-Uploader-Signature": signed}
        assert receiver_verify(secret, headers, body)
        assert verify(secret, str(timestamp), body, signed)
        assert not receiver_verify(secret, headers, body + b" ")
        assert not receiver_verify(secret + "x", headers, body)
    # A key longer than SHA-256's block is hashed first, as HMAC says.
    long_key = "k" * 100
    expected = hmac.new(long_key.encode(), b"7.{}", hashlib.sha256).hexdigest()
    assert signature(long_key, 7, b"{}") == f"sha256={expected}"
