"""Image variants: the configured sizes and formats of an image, with its facts (size,
EXIF) under ``media``. Pillow is imported only when an image is rendered, so processes
that never render one (the API with workers in the full stack) do not carry it."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from uploader.db.models import Upload
from uploader.processing.steps.base import StepContext, StepFailed, StepResult

if TYPE_CHECKING:
    from uploader.processing.images import RenderedVariant

# Formats we decode, by the type sniffing found (never by what the client declared).
IMAGE_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP", "image/gif": "GIF"}


class VariantsStep:
    name: str = "variants"
    types: Collection[str] | None = frozenset(IMAGE_TYPES)
    records: tuple[str, ...] = ("media", "variants")
    announces: tuple[str, ...] = ("variant.ready",)
    from_arrival: bool = False

    async def run(self, upload: Upload, context: StepContext) -> StepResult:
        pillow_format = IMAGE_TYPES[upload.detected_type or ""]
        length = upload.length or 0
        if length > context.settings.image_max_bytes:
            return StepResult({"media": {"note": "too large to render variants"}}, "skipped")
        from uploader.processing.images import ImageRejected, render_variants  # Pillow: only now

        data = await context.read(upload, 0, length)
        specs = list(context.settings.variants)
        try:
            facts, rendered = await asyncio.to_thread(
                render_variants, data, pillow_format, specs, context.settings.image_max_pixels
            )
        except ImageRejected as exc:
            raise StepFailed(str(exc)) from exc
        del data
        return await stored(upload, context, facts.as_json(), rendered)


async def stored(
    upload: Upload, context: StepContext, media: dict[str, Any], rendered: list[RenderedVariant]
) -> StepResult:
    """Store rendered variants as the upload's derived files (replacing an earlier run's,
    removing names no longer configured) and say what to record and announce."""
    variants: list[dict[str, Any]] = []
    for done, variant in enumerate(rendered, start=1):
        await context.store.put_derived(upload.storage_key, variant.name, variant.data)
        entry = {
            "name": variant.name,
            "format": variant.format,
            "media_type": variant.media_type,
            "width": variant.width,
            "height": variant.height,
            "size": len(variant.data),
            "sha256": hashlib.sha256(variant.data).hexdigest(),
        }
        variants.append(entry)
        await context.progress(done / len(rendered))
    await context.store.delete_derived(upload.storage_key, keep={v["name"] for v in variants})
    return StepResult(
        {"media": media, "variants": variants},
        announce=[("variant.ready", {"variant": entry}) for entry in variants],
    )
