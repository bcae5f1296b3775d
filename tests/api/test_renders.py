"""On-demand image renders behind signed URLs, on local storage and on S3."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
from collections.abc import AsyncIterator

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr

from tests.api.helpers import settled_status, upload_bytes, upload_id
from tests.images import is_upright, jpeg
from tests.support import in_process_client, metadata, uploader_command
from uploader.processing import images
from uploader.renders.signing import render_path, signature, signed_url
from uploader.settings import Settings

pytestmark = pytest.mark.parametrize("backend", ["sqlite+local", "postgres+s3"], indirect=True)
KEY = "render-key-for-tests"


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process_client(settings.model_copy(update={"render_key": SecretStr(KEY)})) as client:
        yield client


async def ready_photo(client: httpx.AsyncClient) -> str:
    meta = metadata(filename="photo.jpg", filetype="image/jpeg")
    data = jpeg(1600, 1000, orientation=6)  # stored 1000 x 1600: upright once rotated
    uid = upload_id(await upload_bytes(client, data, chunk=len(data), **{"Upload-Metadata": meta}))
    assert (await settled_status(client, uid))["state"] == "ready"
    return uid


def picture(response: httpx.Response) -> Image.Image:
    return Image.open(io.BytesIO(response.content))


async def test_a_signed_render_is_made_once_then_served_from_the_cache(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    uid = await ready_photo(client)
    calls: list[tuple[object, ...]] = []
    real = images.render_one

    def counted(*args: object) -> tuple[bytes, int, int]:
        calls.append(args)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(images, "render_one", counted)
    url = signed_url(KEY, uid, "w_300,h_200,fit_cover,f_webp,q_80")
    first = await client.get(url)
    assert first.status_code == 200, first.text
    assert first.headers["content-type"] == "image/webp"
    assert first.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert picture(first).size == (300, 200)
    again = await client.get(url)
    assert again.content == first.content
    assert len(calls) == 1, "the second request rendered again"
    unchanged = await client.get(url, headers={"If-None-Match": first.headers["etag"]})
    assert unchanged.status_code == 304
    # Within the box, upright (the EXIF orientation applied), never enlarged.
    contained = picture(await client.get(signed_url(KEY, uid, "w_300,f_png")))
    assert contained.size == (300, 188)
    assert is_upright(contained_png_as_jpeg(contained))
    assert picture(await client.get(signed_url(KEY, uid, "w_4000,f_jpeg"))).size == (1600, 1000)
    assert picture(await client.get(signed_url(KEY, uid, "w_64,h_64,fit_fill"))).size == (64, 64)


def contained_png_as_jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG")
    return out.getvalue()


async def test_only_the_exact_signed_url_renders(client: httpx.AsyncClient) -> None:
    uid = await ready_photo(client)
    ops = "w_300,h_200,fit_cover"
    sig = signature(KEY, render_path(uid, ops))
    refused = {
        "stripped": render_path(uid, ops),
        "tampered": f"{render_path(uid, 'w_3000,h_200,fit_cover')}?sig={sig}",
        "other ops": f"{render_path(uid, 'w_300,h_200')}?sig={sig}",
        "re-encoded": f"{render_path(uid, ops.replace(',', '%2C'))}?sig={sig}",
        "wrong key": signed_url("another-key", uid, ops),
        "empty": f"{render_path(uid, ops)}?sig=",
    }
    for case, url in refused.items():
        answer = await client.get(url)
        assert answer.status_code == 403, (case, answer.text)
        assert answer.json()["code"] == "render.signature_invalid", case
    assert (await client.get(f"{render_path(uid, ops)}?sig={sig}")).status_code == 200


@pytest.mark.parametrize(
    "ops",
    [
        "w_5000",
        "w_0",
        "h_99999999",
        "w_300,w_200",
        "q_80",
        "w_300,q_101",
        "w_300,fit_cover",
        "w_9,f_gif",
        "w_9,x_1",
    ],
)
async def test_ops_outside_the_grammar_are_refused_even_when_signed(
    client: httpx.AsyncClient, ops: str
) -> None:
    answer = await client.get(signed_url(KEY, "0" * 32, ops))  # refused before any lookup
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == "render.ops_invalid"


async def test_what_cannot_render_says_why(client: httpx.AsyncClient, settings: Settings) -> None:
    text = upload_id(await upload_bytes(client, b"not a picture\n" * 100))
    assert (await settled_status(client, text))["state"] == "ready"
    answer = await client.get(signed_url(KEY, text, "w_100"))
    assert (answer.status_code, answer.json()["code"]) == (409, "render.unsupported")
    missing = await client.get(signed_url(KEY, "0" * 32, "w_100"))
    assert missing.status_code == 404
    async with in_process_client(settings) as keyless:  # no render key: renders are off
        off = await keyless.get(signed_url(KEY, text, "w_100"))
    assert (off.status_code, off.json()["code"]) == (404, "render.disabled")


async def test_the_command_line_prints_a_url_that_renders(client: httpx.AsyncClient) -> None:
    uid = await ready_photo(client)
    env = {**os.environ, "UPLOADER_RENDER_KEY": KEY}
    command = [*uploader_command(), "render-url", uid, "w_120,f_jpeg", "--url", "http://testserver"]
    done = await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    printed = done.stdout.strip()
    assert printed == signed_url(KEY, uid, "w_120,f_jpeg", "http://testserver")
    rendered = await client.get(printed)
    assert rendered.status_code == 200
    assert picture(rendered).size == (120, 75)
    command = [*uploader_command(), "render-url", uid, "w_99999"]
    bad = await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True)
    assert bad.returncode == 2
    assert "w_" in bad.stderr
