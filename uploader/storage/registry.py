"""Builds the configured store from ``UPLOADER_STORAGE_URL``."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from uploader.settings import Settings
from uploader.storage.base import UploadStore
from uploader.storage.local import LocalStore


def build_store(settings: Settings) -> UploadStore:
    url = urlsplit(settings.resolved_storage_url)
    if url.scheme == "file":
        return LocalStore(Path(unquote(url.path)), settings.checkpoint_bytes)
    if url.scheme == "s3":
        from uploader.storage.s3 import S3Store  # only deployments on S3 pay for its import

        prefix = url.path.strip("/")
        return S3Store(
            bucket=url.netloc,
            prefix=f"{prefix}/" if prefix else "",
            endpoint_url=settings.s3_endpoint_url,
            max_upload_size=settings.max_upload_size,
            part_size=settings.s3_part_size,
            concurrency=settings.s3_concurrency,
            max_attempts=settings.s3_max_attempts,
        )
    raise ValueError(f"unsupported storage URL scheme {url.scheme!r} (file:// or s3://)")
