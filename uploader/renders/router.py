"""``GET /api/v1/uploads/{id}/render/{ops}?sig=``: a signed render of an image upload.

The signature is the capability: it is checked first, over the path exactly as
received, and a request that carries a valid one needs no other credentials (a render
URL can go into an ``<img>`` on a public page). Without one, only credentials that may
read the upload render it (and the answer may be cached privately only). Each render
is made once and kept as a derived file of the upload (removed with it); answers carry
a strong ``ETag`` and a year-long ``Cache-Control``, and the most recent renders stay in
this process's memory.

A render is made from the smallest image variant that is at least twice its size on
both sides (an upright picture, far fewer pixels to decode than the original; the
variants step made it with a Lanczos pass from the original), and from the original
only when no variant is large enough."""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from uploader.auth.dependencies import current_principal, presented_credential
from uploader.auth.principal import READ
from uploader.db.models import Upload, UploadState
from uploader.downloads.responses import ensure_bytes_kept
from uploader.kit.errors import ProblemError
from uploader.processing.steps.variants import IMAGE_TYPES
from uploader.renders import signing
from uploader.renders.ops import RenderOps, parse_ops
from uploader.storage.base import UploadStore
from uploader.uploads.dependencies import checked_upload_id, service_of

router = APIRouter(prefix="/api/v1/uploads", tags=["downloads"])
CACHE_BYTES = 64 * 1024 * 1024  # renders kept in memory, most recent first
_MARKER = "/render/"


class RenderCache:
    """Rendered bytes by (upload, ops), bounded in total size, least recent out first."""

    def __init__(self, limit: int = CACHE_BYTES) -> None:
        self.limit = limit
        self.size = 0
        self.items: OrderedDict[tuple[str, str], bytes] = OrderedDict()

    def get(self, key: tuple[str, str]) -> bytes | None:
        found = self.items.get(key)
        if found is not None:
            self.items.move_to_end(key)
        return found

    def put(self, key: tuple[str, str], data: bytes) -> None:
        if len(data) > self.limit // 8 or key in self.items:
            return
        self.items[key] = data
        self.size += len(data)
        while self.size > self.limit:
            _, dropped = self.items.popitem(last=False)
            self.size -= len(dropped)


def _cache(request: Request) -> RenderCache:
    state = request.app.state
    if not hasattr(state, "render_cache"):
        state.render_cache = RenderCache()
    cache: RenderCache = state.render_cache
    return cache


@router.head("/{upload_id}/render/{ops}", include_in_schema=False)
@router.get("/{upload_id}/render/{ops}", response_class=Response)
async def render(request: Request, upload_id: str, ops: str, sig: str | None = None) -> Response:
    """An image upload rendered by ``ops`` (``w_300,h_200,fit_cover,f_webp,q_80``), from a
    URL signed with the render key (``uploader render-url``), or by credentials that may
    read the upload."""
    settings = request.app.state.settings
    if settings.render_key is None:
        raise ProblemError("render.disabled", "set UPLOADER_RENDER_KEY to sign and serve renders")
    path = request.scope.get("raw_path", b"").decode("latin-1")  # exactly as sent
    owner: str | None = None  # a valid signature renders whoever's upload it names
    by_signature = signing.valid(settings.render_key.get_secret_value(), path, sig)
    if not by_signature:
        owner = await _reader(request)
    signed_ops = path[path.index(_MARKER) + len(_MARKER) :]
    wanted = parse_ops(signed_ops)
    service = service_of(request)
    upload = await service.get(owner, checked_upload_id(upload_id))
    ensure_bytes_kept(upload)
    pillow_format = IMAGE_TYPES.get(upload.detected_type or "")
    if upload.state != UploadState.READY or pillow_format is None:
        raise ProblemError("render.unsupported", f"only ready images render; this upload is {upload.state}")
    if (upload.length or 0) > settings.image_max_bytes:
        raise ProblemError("render.unsupported", "the image is larger than UPLOADER_IMAGE_MAX_BYTES")
    digest = hashlib.sha256(f"{signed_ops}\n{upload.sha256}".encode()).hexdigest()
    etag = f'"{upload.id}-r{digest[:32]}"'
    headers = {
        "ETag": etag,
        # Signed: the same for anyone; by credentials: not for a shared cache.
        "Cache-Control": f"{'public' if by_signature else 'private'}, max-age=31536000, immutable",
        "X-Content-Type-Options": "nosniff",
    }
    if etag in [c.strip().removeprefix("W/") for c in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    name = f"render-{hashlib.sha256(signed_ops.encode()).hexdigest()[:32]}.{wanted.format}"
    cache = _cache(request)
    data = cache.get((upload.id, name))
    if data is None:
        data = await _derived(service.store, upload, name)
        if data is None:
            data = await _render(service.store, upload, pillow_format, wanted, settings.image_max_pixels)
            await service.store.put_derived(upload.storage_key, name, data)
        cache.put((upload.id, name), data)
    if request.method == "HEAD":
        return Response(headers={**headers, "Content-Length": str(len(data))}, media_type=wanted.media_type)
    return Response(data, headers=headers, media_type=wanted.media_type)


async def _reader(request: Request) -> str | None:
    """Without a valid signature, a request renders only with credentials that may read
    the upload: the owner filter they read under (None: an admin's, everyone's). A request
    with no credentials at all, even on a server open to anonymous uploads, needs the
    signature: otherwise anyone could make it render any size."""
    if presented_credential(request) is None:
        raise ProblemError("render.signature_invalid", "sign the exact path with the render key (?sig=)")
    principal = await current_principal(request)
    principal.require(READ)
    return principal.owner_filter


async def _derived(store: UploadStore, upload: Upload, name: str) -> bytes | None:
    size = await store.derived_size(upload.storage_key, name)
    if size is None:
        return None
    return b"".join([block async for block in store.derived_reader(upload.storage_key, name, 0, size)])


def variant_source(upload: Upload, wanted: RenderOps) -> dict[str, Any] | None:
    """The smallest recorded variant of ``upload`` that is smaller than the original and at
    least twice the render on each side (so the final Lanczos pass keeps its quality), or
    None: render from the original. A JPEG variant serves only a JPEG original: the others
    may have an alpha channel, which WebP and PNG variants keep."""
    media = upload.media or {}
    width, height = media.get("width"), media.get("height")
    if not isinstance(width, int) or not isinstance(height, int):
        return None
    formats = ("JPEG", *_ALPHA) if upload.detected_type == "image/jpeg" else _ALPHA
    usable = [
        variant
        for variant in upload.variants or []
        if _pillow_format(variant) in formats
        and isinstance(variant.get("width"), int)
        and isinstance(variant.get("height"), int)
        and variant["width"] < width
        and wanted.scale_of(variant["width"], variant["height"]) <= 0.5
    ]
    # The fewest pixels; of equal sizes a JPEG, which decodes fastest (at a draft scale).
    return min(usable, key=lambda v: (v["width"] * v["height"], _pillow_format(v) != "JPEG"), default=None)


_ALPHA = ("WEBP", "PNG")


def _pillow_format(variant: dict[str, Any]) -> str | None:
    return IMAGE_TYPES.get(str(variant.get("media_type")))


async def _source(
    store: UploadStore, upload: Upload, pillow_format: str, wanted: RenderOps
) -> tuple[bytes, str]:
    """The bytes to render from, and their Pillow format: a variant when one will do and
    its bytes are those recorded, else the original."""
    variant = variant_source(upload, wanted)
    if variant is not None:
        data = await _derived(store, upload, variant["name"])
        if data is not None and hashlib.sha256(data).hexdigest() == variant.get("sha256"):
            return data, IMAGE_TYPES[variant["media_type"]]
    stored = await store.find(upload.storage_key)
    return b"".join([block async for block in stored.reader(0, upload.length or 0)]), pillow_format


async def _render(
    store: UploadStore, upload: Upload, pillow_format: str, wanted: RenderOps, max_pixels: int
) -> bytes:
    from uploader.processing.images import ImageRejected, render_one  # Pillow: only now

    source, source_format = await _source(store, upload, pillow_format, wanted)
    try:
        data, _, _ = await asyncio.to_thread(
            render_one,
            source,
            source_format,
            wanted.box,
            wanted.fit,
            wanted.format,
            wanted.quality,
            max_pixels,
        )
    except ImageRejected as exc:
        raise ProblemError("render.unsupported", str(exc)) from exc
    return data
