"""PDF files made in the tests: a real multi-page document (Pillow writes it), and small
hand-written ones for the hostile cases (encrypted, broken, an absurd page)."""

from __future__ import annotations

import io

from PIL import Image

FIRST_PAGE = (200, 30, 30)  # the first page's colour: a render of another page shows


def pdf_document(pages: int = 3, title: str = "Quarterly report", author: str = "Ada Lovelace") -> bytes:
    """``pages`` pages of 400 x 300 points, the first one red, with a title and an author."""
    first = Image.new("RGB", (400, 300), FIRST_PAGE)
    rest = [Image.new("RGB", (400, 300), (20, 20, 200)) for _ in range(pages - 1)]
    out = io.BytesIO()
    first.save(out, "PDF", title=title, author=author, save_all=True, append_images=rest, resolution=72)
    return out.getvalue()


def handmade_pdf(mediabox: str = "0 0 612 792", trailer: str = "", extra_object: str = "") -> bytes:
    """One page with a filled square; ``extra_object`` becomes object 5 (an /Encrypt
    dictionary, say) and ``trailer`` adds to the trailer."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        f"<< /Type /Page /Parent 2 0 R /MediaBox [{mediabox}] /Contents 4 0 R >>".encode(),
    ]
    content = b"0 0 1 rg 50 50 200 200 re f"
    objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
    if extra_object:
        objects.append(extra_object.encode())
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (number, body))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R {trailer}>>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return out.getvalue()


def encrypted_pdf() -> bytes:
    """Encrypted with the standard handler under a user password (not the empty one)."""
    handler = f"<< /Filter /Standard /V 1 /R 2 /O <{'00' * 32}> /U <{'11' * 32}> /P -4 >>"
    file_id = "<0123456789abcdef0123456789abcdef>"
    return handmade_pdf(trailer=f"/Encrypt 5 0 R /ID [{file_id} {file_id}] ", extra_object=handler)
