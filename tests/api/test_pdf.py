"""PDF documents in the embedded default: facts, a first-page render into the variant
names, and hostile files that fail with a reason while processing goes on."""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image

from tests.api.helpers import settled_status, upload_bytes, upload_id
from tests.documents import FIRST_PAGE, encrypted_pdf, handmade_pdf, pdf_document
from tests.support import metadata

pytestmark = pytest.mark.parametrize("backend", ["sqlite+local", "postgres+s3"], indirect=True)


async def send(client: httpx.AsyncClient, data: bytes, name: str) -> str:
    meta = metadata(filename=name, filetype="application/pdf")
    return upload_id(await upload_bytes(client, data, chunk=64 * 1024, **{"Upload-Metadata": meta}))


async def test_a_pdf_gets_its_facts_and_its_first_page_as_the_variants(app_client: httpx.AsyncClient) -> None:
    uid = await send(app_client, pdf_document(pages=3), "report.pdf")
    status = await settled_status(app_client, uid)
    assert status["state"] == "ready", status
    assert status["detected_type"] == "application/pdf"
    assert status["processing"]["steps"]["pdf"]["state"] == "done"
    assert list(status["processing"]["steps"]) == ["sniff", "sha256", "pdf"]  # no image variants
    media = status["media"]
    assert (media["pages"], media["title"], media["author"]) == (3, "Quarterly report", "Ada Lovelace")
    assert (media["page_width_pt"], media["page_height_pt"]) == (400, 300)
    names = {v["name"]: v for v in status["variants"]}
    assert set(names) == {"256.webp", "256.jpg", "1024.webp", "1024.jpg"}
    assert (names["1024.jpg"]["width"], names["1024.jpg"]["height"]) == (1024, 768)
    assert (names["256.webp"]["width"], names["256.webp"]["height"]) == (256, 192)
    rendered = await app_client.get(names["256.jpg"]["url"])
    assert rendered.status_code == 200
    picture = Image.open(io.BytesIO(rendered.content)).convert("RGB")
    red, green, blue = picture.getpixel((128, 96))  # type: ignore[misc]
    assert abs(red - FIRST_PAGE[0]) < 20 and green < 60 and blue < 60  # noqa: PT018 - one colour


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (encrypted_pdf(), "pdf.encrypted: "),
        (b"%PDF-1.4\nthis is no PDF, only its first line\n" * 20, "pdf.unreadable: "),
        (pdf_document()[:400], "pdf.unreadable: "),  # cut off
        (handmade_pdf(mediabox="0 0 2000000 2000000"), "pdf.page_too_large: "),
    ],
    ids=["encrypted", "broken", "truncated", "huge-page"],
)
async def test_hostile_pdfs_fail_with_a_reason_and_processing_goes_on(
    app_client: httpx.AsyncClient, data: bytes, reason: str
) -> None:
    uid = await send(app_client, data, "hostile.pdf")
    status = await settled_status(app_client, uid)
    assert status["state"] == "failed", status
    assert status["failure_reason"].startswith(reason), status["failure_reason"]
    assert status["processing"]["steps"]["pdf"]["state"] == "failed"
    kept = await app_client.get(f"/api/v1/uploads/{uid}/content")
    assert kept.content == data  # the original stays downloadable
    after = await send(app_client, pdf_document(pages=1), "fine.pdf")
    assert (await settled_status(app_client, after))["state"] == "ready"
