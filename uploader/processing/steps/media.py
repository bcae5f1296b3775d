"""Video and audio: duration, container, codecs, dimensions, frame rate, bitrate and
rotation under ``media``; for video, a poster frame rendered into the same variant names
as images. ffprobe and ffmpeg read the upload where it lies: the local file, or S3
through a presigned URL that expires in minutes."""

from __future__ import annotations

from collections.abc import Collection

from uploader.db.models import Upload
from uploader.processing.media import Bounds, MediaRejected, poster, probe
from uploader.processing.steps.base import StepContext, StepFailed, StepResult
from uploader.processing.steps.variants import stored
from uploader.storage.base import PresignableUpload

MEDIA_TYPES = frozenset(
    {
        "video/mp4",
        "video/quicktime",
        "video/webm",
        "video/x-msvideo",
        "audio/mpeg",
        "audio/ogg",
        "audio/flac",
        "audio/wav",
    }
)
SOURCE_URL_SECONDS = 900  # long enough for a run, short enough to be of no use after


class MediaStep:
    name: str = "media"
    types: Collection[str] | None = MEDIA_TYPES
    records: tuple[str, ...] = ("media", "variants")
    announces: tuple[str, ...] = ("variant.ready",)
    from_arrival: bool = False

    async def run(self, upload: Upload, context: StepContext) -> StepResult:
        settings = context.settings
        bounds = Bounds(
            settings.media_timeout_seconds, settings.media_memory_bytes, settings.image_max_pixels
        )
        source = await _source(upload, context)
        try:
            facts = await probe(source, bounds)
            if "video" not in facts:
                return StepResult({"media": facts})
            rendered = await poster(source, facts.get("duration"), list(settings.variants), bounds)
        except MediaRejected as exc:
            raise StepFailed(str(exc)) from exc
        return await stored(upload, context, facts, rendered)


async def _source(upload: Upload, context: StepContext) -> str:
    """Where ffmpeg reads the upload: its file, or a short-lived URL of its object."""
    stored_upload = await context.store.find(upload.storage_key)
    path = getattr(stored_upload, "path", None)
    if path is not None:
        return str(path)
    if isinstance(stored_upload, PresignableUpload):
        return await stored_upload.presigned_url(SOURCE_URL_SECONDS, "inline", "application/octet-stream")
    raise StepFailed("media.unavailable: this storage gives ffmpeg no way to read the upload")
