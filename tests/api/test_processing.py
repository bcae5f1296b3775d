"""The processing pipeline in the embedded default, on every backend of the API suite."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import tarfile

import httpx
from PIL import Image

from tests.api.helpers import settled_status, upload_bytes, upload_id
from tests.images import decompression_bomb, is_upright, jpeg, png, zip_archive
from tests.support import WebhookReceiver, in_process_client, metadata, stored_objects
from uploader.settings import Settings
from uploader.webhooks.signing import EVENT_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify


async def upload(client: httpx.AsyncClient, data: bytes, name: str, declared: str) -> str:
    path = await upload_bytes(
        client, data, chunk=256 * 1024, **{"Upload-Metadata": metadata(filename=name, filetype=declared)}
    )
    return upload_id(path)


def tar_archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        content = b"notes\n" * 100
        entry = tarfile.TarInfo("notes.txt")
        entry.size = len(content)
        archive.addfile(entry, io.BytesIO(content))
    return buffer.getvalue()


async def test_a_file_is_processed_from_what_arrived_if_that_is_enough(app_client: httpx.AsyncClient) -> None:
    """A file that is not an image needs only its first bytes and its SHA-256, both seen as
    it arrived: it is ready when its last PATCH is answered, even with every pipeline slot
    taken, and its events are those of a full run. An image still waits for a slot."""
    runtime = app_client.app.state.runtime  # type: ignore[attr-defined]
    slots: asyncio.Semaphore = runtime.processor._slots
    archive = tar_archive()  # its signature is at offset 257: the sniffed bytes span PATCHes
    taken = 0
    try:
        while not slots.locked():
            await slots.acquire()
            taken += 1
        path = await upload_bytes(
            app_client, archive, chunk=100, **{"Upload-Metadata": metadata(filename="notes.tar")}
        )
        status = (await app_client.get(f"/api/v1/uploads/{upload_id(path)}")).json()
        picture = await upload(app_client, png(64, 48), "waits.png", "image/png")
        assert (await app_client.get(f"/api/v1/uploads/{picture}")).json()["state"] == "received"
    finally:
        for _ in range(taken):
            slots.release()
    assert status["state"] == "ready"
    assert status["detected_type"] == "application/x-tar"
    assert status["sha256"] == hashlib.sha256(archive).hexdigest()
    steps = {name: step["state"] for name, step in status["processing"]["steps"].items()}
    assert steps == {"sniff": "done", "sha256": "done"}  # no step of its type
    history = await runtime.events.history("anonymous", upload_id(path), None)
    told = [(e.type, e.data["state"], e.data.get("step")) for e in history if not e.type.endswith("progress")]
    assert told == [
        ("upload.created", "created", None),
        ("upload.received", "received", None),
        ("upload.processing", "processing", None),
        *[(f"processing.step_{when}", "processing", step) for step in steps for when in ("started", "done")],
        ("upload.ready", "ready", None),
    ]
    assert (await settled_status(app_client, picture))["variants"]


async def test_jpeg_gets_upright_variants_without_metadata(
    app_client: httpx.AsyncClient, settings: Settings
) -> None:
    data = jpeg(1600, 1000, orientation=6)
    uid = await upload(app_client, data, "photo.jpg", "image/jpeg")
    status = await settled_status(app_client, uid)
    assert status["state"] == "ready", status["failure_reason"]
    assert status["detected_type"] == "image/jpeg"
    assert status["type_mismatch"] is False
    assert status["sha256"] == hashlib.sha256(data).hexdigest()
    assert status["media"]["width"] == 1600  # upright: the stored pixels are 1000 wide
    assert status["media"]["height"] == 1000
    assert status["media"]["exif"]["orientation"] == 6
    assert status["media"]["exif"]["make"] == "Acme"
    assert set(status["processing"]["steps"]) == {"sniff", "sha256", "variants"}
    assert {s["state"] for s in status["processing"]["steps"].values()} == {"done"}
    variants = {v["name"]: v for v in status["variants"]}
    assert set(variants) == {"256.webp", "256.jpg", "1024.webp", "1024.jpg"}
    for name, variant in variants.items():
        response = await app_client.get(variant["url"])
        assert response.status_code == 200
        assert response.headers["content-type"] == variant["media_type"]
        assert int(response.headers["content-length"]) == variant["size"] == len(response.content)
        picture = Image.open(io.BytesIO(response.content))
        assert picture.size == (variant["width"], variant["height"])
        assert max(picture.size) == int(name.split(".")[0])
        assert is_upright(response.content), name
        assert not picture.getexif(), f"{name} kept EXIF"
        assert "icc_profile" not in picture.info
    # Variants live with the upload: terminating it leaves nothing behind.
    await app_client.delete(f"/files/{uid}", headers={"Tus-Resumable": "1.0.0"})
    assert stored_objects(settings) == []


async def test_variant_download_supports_range_etag_and_304(app_client: httpx.AsyncClient) -> None:
    uid = await upload(app_client, png(900, 600), "chart.png", "image/png")
    status = await settled_status(app_client, uid)
    url = f"/api/v1/uploads/{uid}/variants/256.webp"
    whole = await app_client.get(url)
    assert whole.status_code == 200
    assert whole.headers["content-disposition"].endswith("filename*=UTF-8''chart-256.webp")
    assert whole.headers["x-content-type-options"] == "nosniff"
    etag = whole.headers["etag"]
    part = await app_client.get(url, headers={"Range": "bytes=10-99"})
    assert part.status_code == 206
    assert part.content == whole.content[10:100]
    assert part.headers["content-range"] == f"bytes 10-99/{len(whole.content)}"
    assert (await app_client.get(url, headers={"If-None-Match": etag})).status_code == 304
    assert (await app_client.get(url, headers={"Range": "bytes=999999-"})).status_code == 416
    missing = await app_client.get(f"/api/v1/uploads/{uid}/variants/nope.webp")
    assert missing.status_code == 404
    assert missing.json()["code"] == "variant.not_found"
    assert status["media"]["format"] == "PNG"


async def test_zip_declared_as_jpeg_is_kept_but_not_trusted(app_client: httpx.AsyncClient) -> None:
    uid = await upload(app_client, zip_archive(), "holiday.jpg", "image/jpeg")
    status = await settled_status(app_client, uid)
    assert status["state"] == "ready"
    assert status["declared_type"] == "image/jpeg"
    assert status["detected_type"] == "application/zip"
    assert status["type_mismatch"] is True
    assert status["variants"] == []
    assert "variants" not in status["processing"]["steps"]  # no image step for a ZIP
    # The download never claims to be what the client said it was, unchecked.
    download = await app_client.get(f"/api/v1/uploads/{uid}/content")
    assert download.headers["x-content-type-options"] == "nosniff"


async def test_bad_images_fail_with_a_reason_and_processing_goes_on(app_client: httpx.AsyncClient) -> None:
    bomb = await upload(app_client, decompression_bomb(), "bomb.png", "image/png")
    whole = jpeg(1200, 800)
    truncated = await upload(app_client, whole[: len(whole) // 2], "cut.jpg", "image/jpeg")
    bomb_status = await settled_status(app_client, bomb)
    assert bomb_status["state"] == "failed"
    assert bomb_status["failure_reason"].startswith("image.too_many_pixels")
    assert bomb_status["variants"] == []
    cut_status = await settled_status(app_client, truncated)
    assert cut_status["state"] == "failed"
    assert cut_status["failure_reason"].startswith("image.unreadable")
    assert "truncated" in cut_status["failure_reason"]
    # The originals are kept and downloadable; only their processing failed.
    assert (await app_client.get(f"/api/v1/uploads/{bomb}/content")).status_code == 200
    fine = await upload(app_client, whole, "fine.jpg", "image/jpeg")
    assert (await settled_status(app_client, fine))["state"] == "ready"


async def test_reprocess_runs_the_pipeline_again(app_client: httpx.AsyncClient) -> None:
    uid = await upload(app_client, jpeg(800, 600), "again.jpg", "image/jpeg")
    first = await settled_status(app_client, uid)
    response = await app_client.post(f"/api/v1/uploads/{uid}/reprocess")
    assert response.status_code == 202
    assert response.json()["state"] in ("received", "processing", "ready")
    second = await settled_status(app_client, uid)
    assert second["state"] == "ready"
    assert second["processing"]["started_at"] != first["processing"]["started_at"]
    assert [v["name"] for v in second["variants"]] == [v["name"] for v in first["variants"]]
    unfinished = await app_client.post("/files/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "10"})
    unfinished_id = unfinished.headers["Location"].rsplit("/", 1)[-1]
    refused = await app_client.post(f"/api/v1/uploads/{unfinished_id}/reprocess")
    assert refused.status_code == 409
    assert refused.json()["code"] == "upload.incomplete"
    assert (await app_client.post("/api/v1/uploads/" + "0" * 32 + "/reprocess")).status_code == 404


async def test_terminating_while_processing_leaves_no_variants_behind(
    app_client: httpx.AsyncClient, settings: Settings
) -> None:
    pictures = [jpeg(1600 + 100 * i, 1000) for i in range(4)]
    ids = [await upload(app_client, data, f"p{i}.jpg", "image/jpeg") for i, data in enumerate(pictures)]
    for uid in ids:  # each at a different point of its pipeline, or before it started
        response = await app_client.delete(f"/files/{uid}", headers={"Tus-Resumable": "1.0.0"})
        assert response.status_code == 204
    processor = app_client.app.state.runtime.processor  # type: ignore[attr-defined]
    async with asyncio.timeout(30):
        await asyncio.gather(*processor._tasks, return_exceptions=True)
    assert stored_objects(settings) == []
    for uid in ids:
        assert (await app_client.get(f"/api/v1/uploads/{uid}")).status_code == 404


async def test_webhooks_in_the_embedded_default_are_signed_and_retried(settings: Settings) -> None:
    receiver = WebhookReceiver(failures=1)  # the first delivery is refused: it comes again
    hooked = settings.model_copy(update={"webhook_url": receiver.url, "webhook_secret": "s3cret"})
    try:
        async with in_process_client(hooked) as client:
            uid = await upload(client, jpeg(640, 480), "hook.jpg", "image/jpeg")
            assert (await settled_status(client, uid))["state"] == "ready"
            assert await asyncio.to_thread(receiver.wait_for, {"upload.received", "upload.ready"})
    finally:
        receiver.close()
    for headers, body in receiver.received:
        assert verify("s3cret", headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
        assert json.loads(body)["upload_id"] == uid
        assert headers[EVENT_HEADER] == json.loads(body)["type"]
