"""JSON shapes of the status API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from uploader.db.models import Upload
from uploader.processing.steps.sniff import types_agree
from uploader.uploads.metadata import decoded


class UploadLinks(BaseModel):
    self: str
    content: str
    events: str
    reprocess: str
    tus: str


class StepStatus(BaseModel):
    state: str = Field(description="pending, done or skipped")
    seconds: float | None = None
    detail: str | None = Field(default=None, description="what the step found, in a few words")


class Processing(BaseModel):
    steps: dict[str, StepStatus]
    started_at: datetime | None = None
    finished_at: datetime | None = None


class Variant(BaseModel):
    name: str
    format: str
    media_type: str
    width: int
    height: int
    size: int
    url: str


class Media(BaseModel):
    format: str | None = None
    width: int | None = Field(default=None, description="pixels, upright (images)")
    height: int | None = None
    exif: dict[str, Any] = Field(default_factory=dict)
    note: str | None = None
    pages: int | None = Field(default=None, description="documents: how many pages")
    page_width_pt: float | None = Field(default=None, description="documents: the first page, in points")
    page_height_pt: float | None = None
    title: str | None = Field(default=None, description="documents: the title in their metadata")
    author: str | None = None
    duration: float | None = Field(default=None, description="video and audio: seconds")
    bitrate: int | None = Field(default=None, description="video and audio: bits per second")
    video: dict[str, Any] | None = Field(
        default=None, description="codec, width, height, frame_rate, rotation (degrees)"
    )
    audio: dict[str, Any] | None = Field(default=None, description="codec, sample_rate, channels")


class UploadStatus(BaseModel):
    id: str
    state: str
    offset: int
    length: int | None
    progress: float | None = Field(description="offset / length, when the length is known")
    metadata: dict[str, str | None]
    filename: str | None
    declared_type: str | None
    detected_type: str | None = Field(description="What the bytes show, found by processing")
    type_mismatch: bool = Field(description="The declared type does not fit the detected one")
    concat: str
    protocol: str | None = Field(
        description="How it came: tus, ietf, form or s3-direct (null for uploads older than this field)"
    )
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    completed_at: datetime | None
    sha256: str | None
    failure_reason: str | None
    processing: Processing | None
    media: Media | None
    variants: list[Variant]
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
            detected_type=upload.detected_type,
            type_mismatch=upload.detected_type is not None
            and not types_agree(upload.declared_type, upload.detected_type),
            concat=upload.concat_role,
            protocol=upload.protocol,
            created_at=upload.created_at,
            updated_at=upload.updated_at,
            expires_at=upload.expires_at,
            completed_at=upload.completed_at,
            sha256=upload.sha256,
            failure_reason=upload.failure_reason,
            processing=Processing.model_validate(upload.processing) if upload.processing else None,
            media=Media.model_validate(upload.media) if upload.media else None,
            variants=[Variant(**{**v, "url": f"{base}/variants/{v['name']}"}) for v in upload.variants or []],
            links=UploadLinks(
                self=base,
                content=f"{base}/content",
                events=f"{base}/events",
                reprocess=f"{base}/reprocess",
                tus=f"{tus_path}{upload.id}",
            ),
        )


class UploadPage(BaseModel):
    items: list[UploadStatus]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null at the end")
