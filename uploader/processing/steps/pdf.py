"""PDF: page count, title and author under ``media``, and the first page rendered into the
same variant names as images. Encrypted, broken and absurd-page PDFs fail with a reason."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

from uploader.db.models import Upload
from uploader.processing.steps.base import StepContext, StepFailed, StepResult
from uploader.processing.steps.variants import stored


class PdfStep:
    name: str = "pdf"
    types: Collection[str] | None = frozenset({"application/pdf"})
    records: tuple[str, ...] = ("media", "variants")
    announces: tuple[str, ...] = ("variant.ready",)
    from_arrival: bool = False

    async def run(self, upload: Upload, context: StepContext) -> StepResult:
        length = upload.length or 0
        if length > context.settings.pdf_max_bytes:
            return StepResult({"media": {"format": "PDF", "note": "too large to render"}}, "skipped")
        from uploader.processing.documents import DocumentRejected, render_pdf  # pdfium: only now

        data = await context.read(upload, 0, length)
        try:
            facts, rendered = await asyncio.to_thread(render_pdf, data, list(context.settings.variants))
        except DocumentRejected as exc:
            raise StepFailed(str(exc)) from exc
        del data
        return await stored(upload, context, facts.as_json(), rendered)
