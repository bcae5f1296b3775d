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
    raise ValueError(f"unsupported storage URL scheme {url.scheme!r}")
