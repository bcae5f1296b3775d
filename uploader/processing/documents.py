"""PDF documents with pdfium (``pypdfium2``): page count, title and author, and the first
page rendered into the variant sizes. Imported only when a PDF is processed.

pdfium parses untrusted files in C: it runs in a worker thread of its own, on bytes
bounded by ``UPLOADER_PDF_MAX_BYTES``, and renders only as many pixels as the largest
variant needs, however large the page claims to be."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from uploader.processing.images import RenderedVariant, Unrenderable, variants_of
from uploader.settings import VariantSpec

# The largest page PDF allows: 14,400 units a side, times the largest UserUnit (75).
MAX_PAGE_POINTS = 14_400 * 75


class DocumentRejected(Unrenderable):
    """The document cannot be read or rendered."""


@dataclass(frozen=True)
class DocumentFacts:
    pages: int
    width: float  # of the first page, in points (1/72 inch)
    height: float
    title: str | None
    author: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "format": "PDF",
            "pages": self.pages,
            "page_width_pt": round(self.width, 2),
            "page_height_pt": round(self.height, 2),
            "title": self.title,
            "author": self.author,
        }


def render_pdf(data: bytes, specs: Sequence[VariantSpec]) -> tuple[DocumentFacts, list[RenderedVariant]]:
    import pypdfium2 as pdfium

    try:
        document = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if "password" in str(exc).lower():
            raise DocumentRejected("pdf.encrypted", "the PDF is encrypted (it needs a password)") from exc
        raise DocumentRejected("pdf.unreadable", str(exc)) from exc
    try:
        pages = len(document)
        if pages == 0:
            raise DocumentRejected("pdf.unreadable", "the PDF has no pages")
        metadata = document.get_metadata_dict(skip_empty=True)
        page = document[0]
        try:
            width, height = page.get_size()
            if not (math.isfinite(width) and math.isfinite(height) and width > 0 and height > 0):
                raise DocumentRejected("pdf.page_invalid", f"the first page is {width} x {height} points")
            if max(width, height) > MAX_PAGE_POINTS:
                raise DocumentRejected(
                    "pdf.page_too_large",
                    f"the first page is {width:.0f} x {height:.0f} points, over PDF's {MAX_PAGE_POINTS}",
                )
            facts = DocumentFacts(
                pages=pages,
                width=width,
                height=height,
                title=_text(metadata.get("Title")),
                author=_text(metadata.get("Author")),
            )
            if not specs:
                return facts, []
            # Twice the largest variant, so the final resize keeps its sharpness.
            scale = 2 * max(spec.size for spec in specs) / max(width, height)
            try:
                bitmap = page.render(scale=scale, may_draw_forms=False)
            except pdfium.PdfiumError as exc:
                raise DocumentRejected("pdf.unreadable", f"the first page cannot be rendered: {exc}") from exc
            picture = bitmap.to_pil().convert("RGB")
            bitmap.close()
        finally:
            page.close()
    finally:
        document.close()
    return facts, variants_of(picture, specs)


def _text(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    text = value.replace("\x00", "").strip()
    return text[:500] or None
