"""JSON shapes of the status API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from uploader.db.models import Upload
from uploader.uploads.metadata import decoded


class UploadLinks(BaseModel):
    self: str
    content: str
    tus: str


class UploadStatus(BaseModel):
    id: str
    state: str
    offset: int
    length: int | None
    progress: float | None = Field(description="offset / length, when the length is known")
    metadata: dict[str, str | None]
    filename: str | None
    declared_type: str | None
    concat: str
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    completed_at: datetime | None
    sha256: str | None
    failure_reason: str | None
    links: UploadLinks

    @classmethod
    def of(cls, upload: Upload, tus_path: str) -> UploadStatus:
        base = f"/api/v1/uploads/{upload.id}"
        progress = None
        if upload.length is not None:
            progress = 1.0 if upload.length == 0 else round(upload.offset / upload.length, 6)
        return cls(
            id=upload.id,
            state=upload.state,
            offset=upload.offset,
            length=upload.length,
            progress=progress,
            metadata=decoded(upload.meta),
            filename=upload.filename,
            declared_type=upload.declared_type,
            concat=upload.concat_role,
            created_at=upload.created_at,
            updated_at=upload.updated_at,
            expires_at=upload.expires_at,
            completed_at=upload.completed_at,
            sha256=upload.sha256,
            failure_reason=upload.failure_reason,
            links=UploadLinks(self=base, content=f"{base}/content", tus=f"{tus_path}{upload.id}"),
        )


class UploadPage(BaseModel):
    items: list[UploadStatus]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null at the end")
