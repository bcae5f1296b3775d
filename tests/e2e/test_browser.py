"""Headless Chromium (Debian's) driven by Playwright: the demo page, and Uppy on another origin."""

from __future__ import annotations

import functools
import http.server
import json
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import IN_CI
from tests.images import jpeg
from tests.media import ffmpeg_installed, video_clip
from tests.support import LiveServer, metadata, random_file

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


def test_demo_page_shows_a_videos_poster_frame(live_server: LiveServer, browser: Any, tmp_path: Path) -> None:
    if not ffmpeg_installed():
        if IN_CI:
            pytest.fail("ffmpeg is required in CI (tests/run installs it)")
        pytest.skip("ffmpeg is not installed")
    clip = tmp_path / "walk.mp4"
    clip.write_bytes(video_clip(tmp_path))
    page = browser.new_page()
    page.goto(f"{live_server.url}/")
    ready = _upload_through_page(page, clip, timeout_ms=60_000)
    assert "video/mp4" in ready.locator(".state").inner_text()
    assert _preview_size(page, ready) == [256, 192]
    page.close()


def _upload_through_page(page: Any, path: Path, timeout_ms: int = 30_000) -> Any:
    """Pick ``path`` in the page's Dashboard, upload it, and wait until its card is ready."""
    page.locator(".uppy-Dashboard-input").first.set_input_files(str(path))
    page.locator(".uppy-StatusBar-actionBtn--upload").click()
    ready = page.locator('#uploads li[data-state="ready"]')
    ready.wait_for(timeout=timeout_ms)
    return ready


def _preview_size(page: Any, card: Any) -> list[int]:
    """The natural size of the card's preview (a thumbnail, or a video's poster frame)."""
    preview = card.locator("img.thumbnail")
    preview.wait_for(timeout=10_000)
    size: list[int] = page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0 && [img.naturalWidth, img.naturalHeight]",
        arg=preview.element_handle(),
    ).json_value()
    return size


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
    ready = _upload_through_page(page, photo)
    assert "holiday.jpg" in ready.locator(".name").inner_text()
    assert "image/jpeg" in ready.locator(".state").inner_text()
    assert _preview_size(page, ready) == [256, 192]  # upright: the EXIF orientation was applied
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
    live_server: LiveServer, browser: Any, other_origin: str, tmp_path: Path
) -> None:
    source = random_file(tmp_path / "data.bin", 1024 * 1024 + 7)
    page = browser.new_page()
    page.goto(f"{other_origin}/index.html")
    page.locator(".uppy-Dashboard-input").first.set_input_files(str(source))
    page.wait_for_function("() => document.getElementById('result').textContent.length > 0", timeout=30_000)
    status = json.loads(page.locator("#result").inner_text())
    assert status["length"] == source.stat().st_size
    assert status["filename"] == "data.bin"
    assert httpx.get(f"{live_server.url}{status['links']['content']}").content == source.read_bytes()
    page.close()


FORMS_PAGE = """<!doctype html>
<html><head><link rel="stylesheet" href="uppy.min.css"></head>
<body>
<form id="plain" action="__API__/api/v1/uploads" method="post" enctype="multipart/form-data">
  <input type="file" name="file" multiple> <input name="album" value="plain form"> <button>Send</button>
</form>
<div id="widget"></div><pre id="result"></pre>
<script type="module">
import { Dashboard, Uppy, XHRUpload } from './uppy.min.mjs'
new Uppy({ autoProceed: true, meta: { album: 'uppy' } })
  .use(Dashboard, { inline: true, target: '#widget' })
  .use(XHRUpload, { endpoint: '__API__/api/v1/uploads', fieldName: 'file', allowedMetaFields: ['album'] })
  .on('upload-success', (file, response) => {
    document.getElementById('result').textContent = JSON.stringify(response.body)
  })
</script></body></html>
"""


@pytest.fixture
def other_origin(live_server: LiveServer, tmp_path: Path) -> Iterator[str]:
    """A static site on another origin (another port) with the Uppy bundle and a forms page."""
    site = tmp_path / "site"
    site.mkdir()
    for name in ("uppy.min.mjs", "uppy.min.css"):
        shutil.copy(VENDOR / name, site / name)
    (site / "forms.html").write_text(FORMS_PAGE.replace("__API__", live_server.url))
    (site / "index.html").write_text(CROSS_ORIGIN_PAGE.replace("__API__", live_server.url))
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(site))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_forms_from_a_browser_plain_html_and_uppy_xhr_upload(
    live_server: LiveServer, browser: Any, other_origin: str, tmp_path: Path
) -> None:
    first = random_file(tmp_path / "one.bin", 300_000)
    second = random_file(tmp_path / "two.bin", 200_001)
    page = browser.new_page()
    page.goto(f"{other_origin}/forms.html")
    # A plain <form>: the browser navigates to the JSON answer.
    page.locator("#plain input[type=file]").set_input_files([str(first), str(second)])
    with page.expect_navigation():
        page.locator("#plain button").click()
    created = json.loads(page.locator("body").inner_text())["uploads"]
    assert [u["filename"] for u in created] == ["one.bin", "two.bin"]
    assert {u["metadata"]["album"] for u in created} == {"plain form"}
    # Uppy's XHR upload plugin, cross-origin.
    page.goto(f"{other_origin}/forms.html")
    page.locator(".uppy-Dashboard-input").first.set_input_files(str(first))
    page.wait_for_function("() => document.getElementById('result').textContent.length > 0", timeout=30_000)
    uploaded = json.loads(page.locator("#result").inner_text())["uploads"][0]
    assert uploaded["filename"] == "one.bin"
    assert uploaded["metadata"]["album"] == "uppy"
    stored = httpx.get(f"{live_server.url}{uploaded['links']['content']}").content
    assert stored == first.read_bytes()
    page.close()


# --------------------------------------------------------------------------- the console


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[LiveServer]:
    """A server that requires tokens (HS256)."""
    from tests.auth.tokens import SECRET
    from tests.support import start_server

    server = start_server(
        tmp_path / "tokens", UPLOADER_JWT_SECRET=SECRET, UPLOADER_QUOTA_BYTES=str(64 * 1024 * 1024)
    )
    try:
        yield server
    finally:
        server.stop()


def _console(browser: Any, server: LiveServer, token: str) -> tuple[Any, list[str], list[str]]:
    page = browser.new_page()
    errors: list[str] = []
    requests: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: requests.append(request.url))
    page.goto(f"{server.url}/?token={token}")
    page.wait_for_function("() => document.body.dataset.ready === 'true'", timeout=15_000)
    return page, errors, requests


def test_the_console_lists_follows_and_deletes_with_a_token(
    token_server: LiveServer, browser: Any, tmp_path: Path
) -> None:
    from tests.auth.tokens import bearer, hs256

    token = hs256("yara", scope="upload read delete")
    # Uploads made before the page was opened, by another client: 23, so a page of 20 and "more".
    for index in range(23):
        created = httpx.post(
            token_server.tus_url,
            headers={
                "Tus-Resumable": "1.0.0",
                "Upload-Length": "4",
                "Content-Type": "application/offset+octet-stream",
                "Upload-Metadata": metadata(filename=f"old-{index}.txt"),
                **bearer(token),
            },
            content=b"abcd",
        )
        assert created.status_code == 201, created.text
    photo = tmp_path / "harbour.jpg"
    photo.write_bytes(jpeg(800, 600))
    page, errors, requests = _console(browser, token_server, token)
    whoami = page.locator("#whoami").inner_text()
    assert "yara" in whoami
    assert "92 B of 64.0 MiB held" in whoami  # usage beside quota: 23 uploads of 4 bytes
    cards = page.locator("#uploads li")
    assert cards.count() == 20
    assert cards.first.locator(".name").inner_text() == "old-22.txt"  # newest first
    page.locator("#more").click()
    page.wait_for_function("() => document.querySelectorAll('#uploads li').length === 23")
    assert page.locator("#more").is_hidden()
    # An upload from the page's own Dashboard, followed live to ready with its thumbnail.
    page.locator(".uppy-Dashboard-input").first.set_input_files(str(photo))
    page.locator(".uppy-StatusBar-actionBtn--upload").click()
    ready = page.locator('#uploads li[data-state="ready"]', has_text="harbour.jpg")
    ready.wait_for(timeout=30_000)
    ready.locator("img.thumbnail").wait_for(timeout=10_000)
    assert "image/jpeg" in ready.locator(".facts").inner_text()
    assert any("/api/v1/events?access_token=" in url for url in requests)
    download = ready.locator("a.download").get_attribute("href")
    assert download is not None
    assert httpx.get(f"{token_server.url}{download}").content == photo.read_bytes()
    # After a reload the server's list still has it: not only this page's uploads.
    page.reload()
    page.wait_for_function("() => document.body.dataset.ready === 'true'")
    again = page.locator("#uploads li", has_text="harbour.jpg")
    again.wait_for(timeout=10_000)
    upload_id = again.get_attribute("data-upload-id")
    again.locator("button.delete").click()
    again.wait_for(state="detached", timeout=10_000)
    status = httpx.get(f"{token_server.url}/api/v1/uploads/{upload_id}", headers=bearer(token))
    assert status.status_code == 404
    page.reload()
    page.wait_for_function("() => document.body.dataset.ready === 'true'")
    assert page.locator("#uploads li", has_text="harbour.jpg").count() == 0
    assert errors == []
    assert [url for url in requests if _is_remote(url, token_server.url)] == []
    page.close()
    # A token without the delete scope sees no delete button.
    reader, _, _ = _console(browser, token_server, hs256("yara"))
    assert reader.locator("#uploads li").count() == 20
    assert reader.locator("#uploads button.delete").count() == 0
    reader.close()
    # Without a token the page says what it needs.
    bare = browser.new_page()
    bare.goto(f"{token_server.url}/")
    bare.wait_for_function("() => document.body.dataset.ready === 'true'")
    assert "token" in bare.locator("#notice").inner_text()
    bare.close()


def test_the_console_keeps_an_event_that_comes_while_a_new_uploads_card_is_fetched(
    token_server: LiveServer, browser: Any
) -> None:
    """A new upload's card is made from a status fetch. Its later events (received,
    ready) can come while that fetch is still out: the page must not drop them and keep
    the card at the state the fetch saw. The fetch is held here until they have come."""
    from tests.auth.tokens import bearer, hs256

    token = hs256("yara", scope="upload read")
    page, errors, _ = _console(browser, token_server, token)
    held: list[tuple[Any, Any]] = []  # (route, the answer it got when asked)

    def hold_the_first_fetch(route: Any) -> None:
        if route.request.method == "GET" and not held:
            held.append((route, route.fetch()))  # the state now, answered later
        else:
            route.continue_()

    page.route(re.compile(r"/api/v1/uploads/[0-9a-f]{32}$"), hold_the_first_fetch)
    headers = {"Tus-Resumable": "1.0.0", **bearer(token)}
    created = httpx.post(
        token_server.tus_url,
        headers={**headers, "Upload-Length": "4", "Upload-Metadata": metadata(filename="late.txt")},
    )
    assert created.status_code == 201, created.text
    location = created.headers["Location"]
    upload_id = location.rstrip("/").rsplit("/", 1)[-1]
    deadline = time.monotonic() + 15
    while not held:  # the page asked for the new upload's status, on its upload.created
        assert time.monotonic() < deadline, "the page never fetched the new upload"
        page.wait_for_timeout(50)
    stale = held[0][1].json()
    assert stale["id"] == upload_id
    assert stale["state"] == "created"
    patched = httpx.patch(
        location,
        headers={**headers, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
        content=b"abcd",
    )
    assert patched.status_code == 204
    status_url = f"{token_server.url}/api/v1/uploads/{upload_id}"
    while httpx.get(status_url, headers=bearer(token)).json()["state"] != "ready":
        assert time.monotonic() < deadline, "the upload never became ready"
        time.sleep(0.05)
    page.wait_for_timeout(1_000)  # its events reach the page's stream meanwhile
    route, answer = held[0]
    route.fulfill(response=answer)  # the card is made at "created", after the events
    page.locator(f'#uploads li[data-upload-id="{upload_id}"][data-state="ready"]').wait_for(timeout=10_000)
    assert errors == []
    page.close()


# --------------------------------------------------------------------------- Uppy's S3 plugin

AWS_S3_PAGE = """<!doctype html>
<html><head><link rel="stylesheet" href="uppy.min.css"></head>
<body><div id="widget"></div><pre id="result"></pre><pre id="errors"></pre>
<script type="module">
import { AwsS3, Dashboard, Uppy } from './uppy.min.mjs'
const done = []
new Uppy({ autoProceed: true })
  .use(Dashboard, { inline: true, target: '#widget' })
  .use(AwsS3, {
    companionEndpoint: '__API__',
    shouldUseMultipart: (file) => file.size > 6 * 1024 * 1024,
    getChunkSize: () => 5 * 1024 * 1024,
  })
  .on('upload-success', (file, response) => {
    done.push({ name: file.name, uploadURL: response.uploadURL, body: response.body })
    document.getElementById('result').textContent = JSON.stringify(done)
  })
  .on('upload-error', (file, error) => {
    document.getElementById('errors').textContent += `${file.name}: ${error}\\n`
  })
  .on('s3-multipart:part-uploaded', (file, part) => {
    window.parts = [...(window.parts || []), [file.name, part.PartNumber]]
  })
</script></body></html>
"""


RESUME_PAGE = """<!doctype html>
<html><head><link rel="stylesheet" href="uppy.min.css"></head>
<body><div id="widget"></div><pre id="result"></pre><pre id="errors"></pre>
<script type="module">
import { AwsS3, Dashboard, GoldenRetriever, Uppy } from './uppy.min.mjs'
window.uppy = new Uppy({ id: 'resumable', autoProceed: true })
  .use(Dashboard, { inline: true, target: '#widget' })
  .use(GoldenRetriever, { indexedDB: { maxFileSize: 64 * 1024 * 1024, maxTotalSize: 128 * 1024 * 1024 } })
  .use(AwsS3, {
    companionEndpoint: '__API__',
    shouldUseMultipart: true,
    getChunkSize: () => 5 * 1024 * 1024,
  })
  .on('upload-success', (file, response) => {
    document.getElementById('result').textContent = JSON.stringify({ name: file.name, body: response.body })
  })
  .on('upload-error', (file, error) => {
    document.getElementById('errors').textContent += `${file.name}: ${error}\\n`
  })
window.uppy.on('restored', () => { window.restored = true })
</script></body></html>
"""


@pytest.fixture
def s3_server(tmp_path: Path, s3_endpoint: str) -> Iterator[LiveServer]:
    """The embedded default storing in moto's S3 server, whose bucket lets browsers PUT
    and read the ETag, as a bucket that takes direct uploads must."""
    from tests.support import S3_TEST_BUCKET, S3_TEST_ENV, s3_client, start_server

    s3_client(s3_endpoint).put_bucket_cors(
        Bucket=S3_TEST_BUCKET,
        CORSConfiguration={
            "CORSRules": [
                {
                    "AllowedOrigins": ["*"],
                    "AllowedMethods": ["GET", "PUT", "POST"],
                    "AllowedHeaders": ["*"],
                    "ExposeHeaders": ["ETag"],
                }
            ]
        },
    )
    server = start_server(
        tmp_path / "s3-server",
        **S3_TEST_ENV,
        UPLOADER_STORAGE_URL=f"s3://{S3_TEST_BUCKET}/browser-{tmp_path.name[-8:]}",
        UPLOADER_S3_ENDPOINT_URL=s3_endpoint,
        UPLOADER_S3_DIRECT_POLL_SECONDS="0.5",
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_site(s3_server: LiveServer, tmp_path: Path) -> Iterator[str]:
    """The pages that use Uppy's S3 plugin, on another origin."""
    site = tmp_path / "s3-site"
    site.mkdir()
    for name in ("uppy.min.mjs", "uppy.min.css"):
        shutil.copy(VENDOR / name, site / name)
    (site / "index.html").write_text(AWS_S3_PAGE.replace("__API__", s3_server.url))
    (site / "resume.html").write_text(RESUME_PAGE.replace("__API__", s3_server.url))
    static = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(site))
    )
    threading.Thread(target=static.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{static.server_address[1]}"
    finally:
        static.shutdown()
        static.server_close()


def test_uppy_aws_s3_uploads_straight_to_the_bucket_single_and_multipart(
    s3_server: LiveServer, s3_site: str, browser: Any, tmp_path: Path
) -> None:
    small = random_file(tmp_path / "small.bin", 700_001)
    large = random_file(tmp_path / "large.bin", 11 * 1024 * 1024 + 5)
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(f"{s3_site}/index.html")
        page.locator(".uppy-Dashboard-input").first.set_input_files([str(small), str(large)])
        page.wait_for_function(
            "() => document.getElementById('result').textContent.split('name').length === 3"
            " || document.getElementById('errors').textContent.length > 0",
            timeout=60_000,
        )
        assert page.locator("#errors").inner_text() == ""
        assert errors == []
        done = {item["name"]: item for item in json.loads(page.locator("#result").inner_text())}
        parts = page.evaluate("() => window.parts || []")
    finally:
        page.close()
    assert set(done) == {"small.bin", "large.bin"}
    # The large file went in three parts of 5, 5 and 1 MiB; the small one in one POST.
    assert sorted(parts) == [["large.bin", 1], ["large.bin", 2], ["large.bin", 3]]
    uploads = {u["filename"]: u for u in httpx.get(f"{s3_server.url}/api/v1/uploads").json()["items"]}
    for source in (small, large):
        upload = uploads[source.name]
        assert upload["protocol"] == "s3-direct"
        deadline = 30.0
        while upload["state"] not in ("ready", "failed") and deadline > 0:
            threading.Event().wait(0.2)
            deadline -= 0.2
            upload = httpx.get(f"{s3_server.url}/api/v1/uploads/{upload['id']}").json()
        assert upload["state"] == "ready", upload
        assert upload["length"] == source.stat().st_size
        content = httpx.get(f"{s3_server.url}{upload['links']['content']}").content
        assert content == source.read_bytes()


def test_uppy_resumes_a_multipart_upload_after_a_page_reload(
    s3_server: LiveServer, s3_site: str, browser: Any, s3_endpoint: str, tmp_path: Path
) -> None:
    source = random_file(tmp_path / "movie.bin", 4 * 5 * 1024 * 1024 + 99)  # five parts
    context = browser.new_context()
    page = context.new_page()
    sent: list[str] = []
    held: list[Any] = []

    reloaded = [False]

    def first_two_parts_only(route: Any) -> None:
        request = route.request
        if reloaded[0] or request.method != "PUT":
            route.continue_()
        elif len([m for m in sent if m == "PUT"]) < 2:
            sent.append("PUT")
            route.continue_()
        else:
            held.append(route)  # the third part never gets an answer: the page is reloaded

    try:
        page.route(f"{s3_endpoint}/**", first_two_parts_only)
        page.goto(f"{s3_site}/resume.html")
        page.locator(".uppy-Dashboard-input").first.set_input_files(str(source))
        deadline = time.monotonic() + 30
        while not held:
            assert time.monotonic() < deadline, "the third part was never sent"
            page.wait_for_timeout(100)
        # The held part stays unanswered until the reload cancels it; what the page
        # sends after the reload goes through.
        reloaded[0] = True
        # After the reload, Golden Retriever brings the file back, the plugin asks which
        # parts S3 holds and sends only the rest.
        resumed: list[str] = []
        page.on(
            "request",
            lambda request: (
                resumed.append(f"{request.method} {request.url}")
                if request.url.startswith((s3_endpoint, s3_server.url))
                else None
            ),
        )
        page.reload()
        page.wait_for_function("() => window.restored === true", timeout=30_000)
        # What the Dashboard's resume button does: run the restored upload again.
        page.evaluate("() => window.uppy.restore(Object.keys(window.uppy.getState().currentUploads)[0])")
        page.wait_for_function(
            "() => document.getElementById('result').textContent.length > 0"
            " || document.getElementById('errors').textContent.length > 0",
            timeout=60_000,
        )
        assert page.locator("#errors").inner_text() == ""
    finally:
        context.close()
    listed = [
        r
        for r in resumed
        if r.startswith("GET") and "/s3/multipart/" in r and r.split("?")[0].count("/") == 5
    ]
    assert listed, resumed
    puts = [r for r in resumed if r.startswith("PUT")]
    assert all("X-Amz-Algorithm=AWS4-HMAC-SHA256" in r for r in puts), puts  # SigV4
    numbers = sorted(int(r.split("partNumber=")[1].split("&")[0]) for r in puts)
    assert numbers == [3, 4, 5], puts  # the first two were not sent again
    uploads = httpx.get(f"{s3_server.url}/api/v1/uploads").json()["items"]
    (upload,) = [u for u in uploads if u["filename"] == "movie.bin"]
    deadline = time.monotonic() + 30
    while upload["state"] not in ("ready", "failed"):
        assert time.monotonic() < deadline, upload
        time.sleep(0.2)
        upload = httpx.get(f"{s3_server.url}/api/v1/uploads/{upload['id']}").json()
    assert upload["state"] == "ready"
    assert httpx.get(f"{s3_server.url}{upload['links']['content']}").content == source.read_bytes()
