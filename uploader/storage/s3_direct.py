"""Direct uploads to S3: the client sends the bytes to the bucket itself, with URLs this
server signs (a presigned POST for one request, presigned UploadPart URLs for multipart).

The object lands where a tus upload's would (``<prefix>K`` for storage key ``K``), so
downloads, processing and removal treat it like any other. An unfinished multipart upload
keeps its id in ``K.info``, as tus uploads on S3 do: terminating or expiring the upload
aborts it like theirs. The multipart upload declares no part checksum, since browsers
send none.
"""

from __future__ import annotations

import contextlib
import json
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aioboto3
from botocore.config import Config

from uploader.storage.base import StorageUnavailable
from uploader.storage.s3 import _STORAGE_KEY, S3Store, S3Upload, _Info, _is_missing, _s3
from uploader.storage.sigv4 import Credentials, PartUrlTemplate

MAX_TEMPLATES = 10_000


class DirectS3:
    """Signing and bookkeeping of direct uploads on one ``S3Store``. URLs are signed for
    ``public_endpoint_url`` when set (the address clients reach S3 at), else for the
    store's own endpoint."""

    def __init__(self, store: S3Store, public_endpoint_url: str | None, sign_seconds: int) -> None:
        self.store = store
        self.public_endpoint_url = public_endpoint_url
        self.sign_seconds = sign_seconds
        self._signer_context: Any = None
        self._signer: Any = None
        # (storage key, multipart id) -> what its part URLs share.
        self._part_templates: OrderedDict[tuple[str, str], PartUrlTemplate] = OrderedDict()

    async def start(self) -> None:
        # A client of its own: URLs are signed with SigV4 (botocore would presign with the
        # legacy SigV2, which newer regions refuse), for where clients reach S3.
        session = aioboto3.Session()
        self._signer_context = session.client(
            "s3",
            endpoint_url=self.public_endpoint_url or self.store.endpoint_url,
            config=Config(signature_version="s3v4"),
        )
        self._signer = await self._signer_context.__aenter__()

    async def close(self) -> None:
        if self._signer_context is not None:
            await self._signer_context.__aexit__(None, None, None)
            self._signer_context = None

    @property
    def signer(self) -> Any:
        assert self._signer is not None, "start() first"
        return self._signer

    @property
    def bucket(self) -> str:
        return self.store.bucket

    def object_key(self, storage_key: str) -> str:
        return self.store.prefix + storage_key

    def storage_key_of(self, object_key: str) -> str | None:
        """The storage key of an upload's object key; None for anything else (another
        prefix, a bookkeeping object, a key a client made up)."""
        if not object_key.startswith(self.store.prefix):
            return None
        rest = object_key[len(self.store.prefix) :]
        return rest if _STORAGE_KEY.match(rest) else None

    # -- one request: a presigned POST ------------------------------------------------------

    async def post_form(
        self, storage_key: str, max_size: int, content_type: str
    ) -> tuple[str, dict[str, str]]:
        """The URL and form fields of a POST that may store at most ``max_size`` bytes,
        at exactly this upload's key (S3 checks both against the signed policy)."""
        key = self.object_key(storage_key)
        signed: dict[str, Any] = await self.signer.generate_presigned_post(
            Bucket=self.bucket,
            Key=key,
            Fields={"Content-Type": content_type},
            Conditions=[
                ["content-length-range", 0, max_size],
                {"key": key},
                {"Content-Type": content_type},
            ],
            ExpiresIn=self.sign_seconds,
        )
        url = str(signed["url"])
        # The plugin takes ``url + key`` for the object's location.
        return (url if url.endswith("/") else url + "/"), {k: str(v) for k, v in signed["fields"].items()}

    # -- multipart --------------------------------------------------------------------------

    async def begin_multipart(self, storage_key: str, content_type: str) -> str:
        key = self.object_key(storage_key)
        created = await _s3(
            self.store.client.create_multipart_upload(Bucket=self.bucket, Key=key, ContentType=content_type)
        )
        multipart_id = str(created["UploadId"])
        info = {"multipart_id": multipart_id, "part_size": 0, "checksum": None, "direct": True}
        await self.store.put_bytes(f"{key}.info", json.dumps(info).encode())
        self.store.remember(storage_key, _Info(multipart_id=multipart_id, part_size=0))
        return multipart_id

    async def multipart_id(self, storage_key: str) -> str | None:
        """The id of the upload's unfinished multipart upload; None once there is none."""
        try:
            return (await S3Upload(self.store, storage_key).info()).multipart_id
        except StorageUnavailable as exc:
            if _is_missing(exc):
                return None
            raise

    async def part_url(self, storage_key: str, multipart_id: str, number: int) -> str:
        """A URL to PUT part ``number`` to: botocore presigns the first one an upload asks
        for here, and the rest are signed from it (``sigv4.py``)."""
        template = self._part_templates.get((storage_key, multipart_id))
        credentials = await self._credentials() if template is not None else None
        if template is not None and credentials is not None:
            return template.sign(number, credentials, datetime.now(UTC), self.sign_seconds)
        url: str = await self.signer.generate_presigned_url(
            "upload_part",
            Params={
                "Bucket": self.bucket,
                "Key": self.object_key(storage_key),
                "UploadId": multipart_id,
                "PartNumber": number,
            },
            ExpiresIn=self.sign_seconds,
        )
        template = PartUrlTemplate.of(url)
        if template is not None:
            self._part_templates[(storage_key, multipart_id)] = template
            while len(self._part_templates) > MAX_TEMPLATES:
                self._part_templates.popitem(last=False)
        return url

    async def _credentials(self) -> Credentials | None:
        """The signing client's credentials as of now (refreshed by botocore when they
        expire); None when they cannot be had, and botocore signs."""
        try:
            source = self.signer._request_signer._credentials
            frozen = await source.get_frozen_credentials()
        except Exception:
            return None
        if not frozen.access_key or not frozen.secret_key:
            return None
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token)

    async def parts(self, storage_key: str, multipart_id: str) -> list[dict[str, Any]]:
        """Every part stored so far, every page of the listing merged, in order."""
        found: list[dict[str, Any]] = []
        marker = 0
        while True:
            page = await _s3(
                self.store.client.list_parts(
                    Bucket=self.bucket,
                    Key=self.object_key(storage_key),
                    UploadId=multipart_id,
                    PartNumberMarker=marker,
                )
            )
            found.extend(
                {"PartNumber": int(p["PartNumber"]), "Size": int(p["Size"]), "ETag": str(p["ETag"])}
                for p in page.get("Parts", [])
            )
            if not page.get("IsTruncated"):
                return found
            marker = int(page["NextPartNumberMarker"])

    def location(self, storage_key: str) -> str:
        """The object's URL, as clients reach S3."""
        endpoint = self.public_endpoint_url or self.store.endpoint_url
        key = quote(self.object_key(storage_key))
        if endpoint:
            return f"{endpoint.rstrip('/')}/{self.bucket}/{key}"
        return f"https://{self.bucket}.s3.amazonaws.com/{key}"

    async def complete(self, storage_key: str, multipart_id: str, parts: list[dict[str, Any]]) -> None:
        await _s3(
            self.store.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.object_key(storage_key),
                UploadId=multipart_id,
                MultipartUpload={"Parts": parts},
            )
        )
        await self._forget(storage_key)

    async def abort(self, storage_key: str, multipart_id: str) -> None:
        with contextlib.suppress(StorageUnavailable):  # gone already: nothing to abort
            await _s3(
                self.store.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=self.object_key(storage_key), UploadId=multipart_id
                )
            )
        await self._forget(storage_key)

    async def _forget(self, storage_key: str) -> None:
        await self.store.delete(f"{self.object_key(storage_key)}.info")
        self.store.known_info.pop(storage_key, None)

    # -- the object ---------------------------------------------------------------------------

    async def size(self, storage_key: str) -> int | None:
        """The stored object's size; None while there is none."""
        try:
            head = await _s3(
                self.store.client.head_object(Bucket=self.bucket, Key=self.object_key(storage_key))
            )
        except StorageUnavailable as exc:
            if _is_missing(exc):
                return None
            raise
        return int(head["ContentLength"])
