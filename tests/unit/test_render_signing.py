"""The README's way to sign a render URL from Python is the server's."""

from __future__ import annotations

import re

from tests.support import REPO
from uploader.renders.signing import signed_url


def test_the_readmes_python_signer_makes_the_urls_the_server_accepts() -> None:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```python\n(import base64, hashlib, hmac\n.*?def render_url.*?)```", readme, re.S)
    assert block is not None, "the README's render_url snippet is gone"
    namespace: dict[str, object] = {}
    exec(block.group(1), namespace)
    render_url = namespace["render_url"]
    assert callable(render_url)
    upload_id, ops = "5" * 32, "w_300,h_200,fit_cover,f_webp,q_80"
    expected = signed_url("k3y", upload_id, ops, "https://files.example")
    assert render_url("https://files.example", "k3y", upload_id, ops) == expected
