"""Part URLs signed from a template are the URLs botocore presigns, signature included."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlsplit

import boto3
import pytest
from botocore.config import Config

from uploader.storage.sigv4 import Credentials, PartUrlTemplate


def presigned(client: object, key: str, number: int) -> str:
    url: str = client.generate_presigned_url(  # type: ignore[attr-defined]
        "upload_part",
        Params={"Bucket": "media", "Key": key, "UploadId": "mp-1~x/y+z=", "PartNumber": number},
        ExpiresIn=3600,
    )
    return url


@pytest.mark.parametrize(
    ("endpoint", "region", "token", "key"),
    [
        ("http://127.0.0.1:9000", "us-east-1", None, "uploads/0123456789abcdef0123456789abcdef"),
        (None, "eu-west-1", None, "a prefix/with spaces+and~marks/0123456789abcdef"),
        ("https://minio.example.com", "us-east-1", "session/token+=", "k"),
    ],
)
def test_a_signed_part_url_is_botocore_s(
    endpoint: str | None, region: str, token: str | None, key: str
) -> None:
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        aws_session_token=token,
        config=Config(signature_version="s3v4"),
    )
    template = PartUrlTemplate.of(presigned(client, key, 1))
    assert template is not None
    theirs = presigned(client, key, 7)
    when = datetime.strptime(dict(parse_qsl(urlsplit(theirs).query))["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    ours = template.sign(7, credentials, when.replace(tzinfo=UTC), 3600)
    theirs_parts, ours_parts = urlsplit(theirs), urlsplit(ours)
    assert (ours_parts.scheme, ours_parts.netloc, ours_parts.path) == (
        theirs_parts.scheme,
        theirs_parts.netloc,
        theirs_parts.path,
    )
    assert dict(parse_qsl(ours_parts.query)) == dict(parse_qsl(theirs_parts.query))  # the signature too


def test_anything_but_a_sigv4_query_url_is_left_to_botocore() -> None:
    assert (
        PartUrlTemplate.of("http://s3/bucket/key?partNumber=1&AWSAccessKeyId=a&Signature=b&Expires=1") is None
    )
    assert PartUrlTemplate.of("http://s3/bucket/key?X-Amz-Algorithm=AWS4-HMAC-SHA256") is None
