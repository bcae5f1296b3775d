"""Headless Chromium (Debian's) driven by Playwright: the demo page, and Uppy on another origin."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import IN_CI
from tests.images import jpeg
from tests.support import LiveServer, random_file

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("browser")]
VENDOR = Path(__file__).resolve().parents[2] / "uploader" / "web" / "static" / "vendor" / "uppy"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium")
    if chromium is None:
        if IN_CI:
            pytest.fail("Debian's chromium is required in CI (tests/run installs it)")
        pytest.skip("chromium is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def test_demo_page_uploads_and_shows_processing_live(
    live_server: LiveServer, browser: Any, tmp_path: Path
) -> None:
    photo = tmp_path / "holiday.jpg"
    photo.write_bytes(jpeg(1600, 1200, orientation=6))
    page = browser.new_page()
    errors: list[str] = []
    elsewhere: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "request",
        lambda request: elsewhere.append(request.url) if _is_remote(request.url, live_server.url) else None,
    )
    page.goto(f"{live_server.url}/")
    page.locator(".uppy-Dashboard-input").first.set_input_files(str(photo))
    page.locator(".uppy-StatusBar-actionBtn--upload").click()
    ready = page.locator('#uploads li[data-state="ready"]')
    ready.wait_for(timeout=30_000)
    assert "holiday.jpg" in ready.locator(".name").inner_text()
    assert "image/jpeg" in ready.locator(".state").inner_text()
    thumbnail = ready.locator("img.thumbnail")
    thumbnail.wait_for(timeout=10_000)
    size = page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0 && [img.naturalWidth, img.naturalHeight]",
        arg=thumbnail.element_handle(),
    ).json_value()
    assert size == [256, 192]  # upright: the EXIF orientation was applied
    assert ready.locator(".variants a").count() == 4
    assert errors == []
    assert elsewhere == [], "the page fetched something from another host (a CDN?)"
    page.close()


def _is_remote(url: str, own: str) -> bool:
    """A request over the network to somewhere else (``blob:`` and ``data:`` URLs are local)."""
    return url.startswith(("http:", "https:", "ws:", "wss:")) and not url.startswith(own)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        return None


CROSS_ORIGIN_PAGE = """<!doctype html>
<html><head><link rel="stylesheet" href="uppy.min.css"></head>
<body><div id="widget"></div><pre id="result"></pre>
<script type="module">
import { Dashboard, Tus, Uppy } from './uppy.min.mjs'
const api = '__API__'
new Uppy({ autoProceed: true })
  .use(Dashboard, { inline: true, target: '#widget' })
  .use(Tus, { endpoint: `${api}/files/`, chunkSize: 256 * 1024 })
  .on('upload-success', async (file, response) => {
    const id = response.uploadURL.split('/').pop()
    const status = await (await fetch(`${api}/api/v1/uploads/${id}`)).json()
    document.getElementById('result').textContent = JSON.stringify(status)
  })
</script></body></html>
"""


def test_uppy_on_another_origin_uploads_to_the_api(
    live_server: LiveServer, browser: Any, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    for name in ("uppy.min.mjs", "uppy.min.css"):
        shutil.copy(VENDOR / name, site / name)
    (site / "index.html").write_text(CROSS_ORIGIN_PAGE.replace("__API__", live_server.url))
    handler = functools.partial(_QuietHandler, directory=str(site))
    other_origin = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=other_origin.serve_forever, daemon=True).start()
    source = random_file(tmp_path / "data.bin", 1024 * 1024 + 7)
    try:
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{other_origin.server_address[1]}/index.html")
        page.locator(".uppy-Dashboard-input").first.set_input_files(str(source))
        result = page.locator("#result")
        page.wait_for_function(
            "() => document.getElementById('result').textContent.length > 0", timeout=30_000
        )
        status = json.loads(result.inner_text())
        assert status["length"] == source.stat().st_size
        assert status["filename"] == "data.bin"
        stored = httpx.get(f"{live_server.url}{status['links']['content']}").content
        assert stored == source.read_bytes()
        page.close()
    finally:
        other_origin.shutdown()
        other_origin.server_close()
