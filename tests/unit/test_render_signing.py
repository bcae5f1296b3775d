"""The README's way to sign a render URL from Python is the server's."""

from __future__ import annotations

from tests.support import readme_function
from uploader.renders.signing import signed_url


def test_the_readmes_python_signer_makes_the_urls_the_server_accepts() -> None:
    render_url = readme_function("import base64, hashlib, hmac", "render_url")
    upload_id, ops = "5" * 32, "w_300,h_200,fit_cover,f_webp,q_80"
    expected = signed_url("k3y", upload_id, ops, "https://files.example")
    assert render_url("https://files.example", "k3y", upload_id, ops) == expected
