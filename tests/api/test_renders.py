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
    calls = counting_renders(monkeypatch)
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


def counting_renders(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, str]]:
    """What each render was made from: the source's bytes and its Pillow format."""
    sources: list[tuple[bytes, str]] = []
    real = images.render_one

    def counted(data: bytes, pillow_format: str, *args: object) -> tuple[bytes, int, int]:
        sources.append((data, pillow_format))
        return real(data, pillow_format, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(images, "render_one", counted)
    return sources


async def test_a_small_render_is_made_from_a_variant_and_a_large_one_from_the_original(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    uid = await ready_photo(client)  # 1600 x 1000 upright; variants of 1024 and 256 px
    sources = counting_renders(monkeypatch)
    small = await client.get(signed_url(KEY, uid, "w_300,f_webp"))
    assert small.status_code == 200, small.text
    data, pillow_format = sources[-1]
    # The smallest variant at least twice the render: 1024 x 640, upright, a JPEG for a JPEG.
    assert (pillow_format, Image.open(io.BytesIO(data)).size) == ("JPEG", (1024, 640))
    assert picture(small).size == (300, 188)
    assert is_upright(contained_png_as_jpeg(picture(small)))
    tiny = await client.get(signed_url(KEY, uid, "w_100"))
    assert Image.open(io.BytesIO(sources[-1][0])).size == (256, 160)
    assert picture(tiny).size == (100, 62)
    # A square crop scales by the taller side: 160 px is not twice 100, 640 is.
    square = await client.get(signed_url(KEY, uid, "w_100,h_100,fit_cover"))
    assert Image.open(io.BytesIO(sources[-1][0])).size == (1024, 640)
    assert picture(square).size == (100, 100)
    # Larger than half the biggest variant: from the original, stored sideways.
    large = await client.get(signed_url(KEY, uid, "w_600,f_jpeg"))
    assert Image.open(io.BytesIO(sources[-1][0])).size == (1000, 1600)
    assert picture(large).size == (600, 375)
    assert is_upright(large.content)


async def test_a_variant_whose_bytes_changed_is_not_rendered_from(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    uid = await ready_photo(client)
    service = client.app.state.uploads  # type: ignore[attr-defined]
    upload = await service.get(None, uid)
    other = jpeg(1024, 640, quality=50)
    for name in ("1024.jpg", "1024.webp"):  # not the bytes recorded: the original is used
        await service.store.put_derived(upload.storage_key, name, other)
    sources = counting_renders(monkeypatch)
    rendered = await client.get(signed_url(KEY, uid, "w_300"))
    assert rendered.status_code == 200
    assert Image.open(io.BytesIO(sources[-1][0])).size == (1000, 1600)


async def test_a_transparent_image_renders_from_a_variant_that_keeps_its_alpha(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    picture_with_alpha = Image.new("RGBA", (1600, 1000), (200, 30, 30, 255))
    picture_with_alpha.paste((0, 0, 0, 0), (0, 0, 800, 1000))  # the left half transparent
    out = io.BytesIO()
    picture_with_alpha.save(out, "PNG")
    meta = metadata(filename="logo.png", filetype="image/png")
    uid = upload_id(await upload_bytes(client, out.getvalue(), **{"Upload-Metadata": meta}))
    assert (await settled_status(client, uid))["state"] == "ready"
    sources = counting_renders(monkeypatch)
    rendered = picture(await client.get(signed_url(KEY, uid, "w_300,f_png")))
    assert sources[-1][1] == "WEBP", "not the variant that keeps the alpha channel"
    assert rendered.size == (300, 188)
    assert rendered.mode == "RGBA"
    assert rendered.getpixel((40, 90))[3] == 0  # type: ignore[index]
    assert rendered.getpixel((260, 90))[3] == 255  # type: ignore[index]


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


async def test_credentials_that_may_read_an_upload_render_it_without_a_signature(
    settings: Settings,
) -> None:
    keys = {"alice-key": "alice", "bob-key": "bob"}
    keyed = settings.model_copy(update={"render_key": SecretStr(KEY), "api_keys": keys})
    async with in_process_client(keyed) as client:
        alice = {"Authorization": "Bearer alice-key"}
        client.headers.update(alice)
        uid = await ready_photo(client)
        del client.headers["Authorization"]
        unsigned = render_path(uid, "w_120,f_jpeg")
        by_owner = await client.get(unsigned, headers=alice)
        assert by_owner.status_code == 200, by_owner.text
        assert picture(by_owner).size == (120, 75)
        assert by_owner.headers["cache-control"] == "private, max-age=31536000, immutable"
        assert (await client.get(f"{unsigned}?access_token=alice-key")).status_code == 200  # an <img>
        by_other = await client.get(unsigned, headers={"Authorization": "Bearer bob-key"})
        assert by_other.status_code == 404  # not bob's: as if it did not exist
        anonymous = await client.get(unsigned)
        assert (anonymous.status_code, anonymous.json()["code"]) == (403, "render.signature_invalid")
        unknown = await client.get(unsigned, headers={"Authorization": "Bearer mallory-key"})
        assert unknown.status_code == 401
        signed = await client.get(signed_url(KEY, uid, "w_120,f_jpeg"))  # no credentials at all
        assert signed.status_code == 200
        assert signed.headers["cache-control"] == "public, max-age=31536000, immutable"


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
