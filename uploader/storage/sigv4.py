"""SigV4 query signing of UploadPart URLs, from a URL botocore presigned for the same
multipart upload.

A direct upload asks for one signed URL per part. botocore's ``generate_presigned_url``
builds and signs a whole request each time, which cost more CPU than everything else
the API does for the part. The URLs of one multipart upload differ only in the part
number, the time and the signature, so the first one, presigned by botocore, is the
template: its host, path, parameters and credential scope are kept, and each part is
signed as SigV4 says (query authentication, ``UNSIGNED-PAYLOAD``, only ``host``
signed). A unit test checks the signatures against botocore's for the same instant.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
_AUTH_PARAMS = ("X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders", "X-Amz-Signature")


def _encode(value: str) -> str:
    return quote(value, safe="-_.~")


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None


@dataclass(frozen=True)
class PartUrlTemplate:
    """What every part URL of one multipart upload shares."""

    scheme: str
    host: str
    path: str  # as botocore encoded it: S3 signs the path as sent
    params: tuple[tuple[str, str], ...]  # uploadId and the like: not the part, not the auth
    region: str
    service: str

    @classmethod
    def of(cls, url: str) -> PartUrlTemplate | None:
        """The template of a URL botocore presigned with SigV4 query authentication, or
        None for anything else (then botocore keeps signing)."""
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        if query.get("X-Amz-Algorithm") != ALGORITHM or query.get("X-Amz-SignedHeaders") != "host":
            return None
        scope = query.get("X-Amz-Credential", "").split("/")
        if len(scope) != 5 or scope[4] != "aws4_request" or "partNumber" not in query:
            return None
        kept = tuple(
            (name, value)
            for name, value in query.items()
            if name not in (*_AUTH_PARAMS, "X-Amz-Algorithm", "X-Amz-Security-Token", "partNumber")
        )
        return cls(parts.scheme, parts.netloc, parts.path or "/", kept, scope[2], scope[3])

    def sign(self, number: int, credentials: Credentials, now: datetime, expires: int) -> str:
        stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        day = stamp[:8]
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        params = [
            *self.params,
            ("partNumber", str(number)),
            ("X-Amz-Algorithm", ALGORITHM),
            ("X-Amz-Credential", f"{credentials.access_key}/{scope}"),
            ("X-Amz-Date", stamp),
            ("X-Amz-Expires", str(expires)),
            ("X-Amz-SignedHeaders", "host"),
        ]
        if credentials.token:
            params.append(("X-Amz-Security-Token", credentials.token))
        query = "&".join(f"{_encode(k)}={_encode(v)}" for k, v in sorted(params))
        request = f"PUT\n{self.path}\n{query}\nhost:{self.host}\n\nhost\nUNSIGNED-PAYLOAD"
        to_sign = f"{ALGORITHM}\n{stamp}\n{scope}\n{hashlib.sha256(request.encode()).hexdigest()}"
        key = _signing_key(credentials.secret_key, day, self.region, self.service)
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        return f"{self.scheme}://{self.host}{self.path}?{query}&X-Amz-Signature={signature}"


def _signing_key(secret: str, day: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key
