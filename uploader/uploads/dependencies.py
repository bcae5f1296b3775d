"""Request-level accessors shared by every router that touches uploads."""

from __future__ import annotations

import re

from fastapi import Request

from uploader.kit.errors import ProblemError
from uploader.uploads.service import UploadService

_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")


def service_of(request: Request) -> UploadService:
    service: UploadService = request.app.state.uploads
    return service


def is_upload_id(value: str) -> bool:
    return bool(_UPLOAD_ID.match(value))


def checked_upload_id(value: str) -> str:
    """An id that cannot be one of ours is simply not found."""
    if not is_upload_id(value):
        raise ProblemError("upload.not_found")
    return value
