"""Video and audio in the embedded default, with Debian's ffmpeg: facts, a poster frame
in the variant names, read from the local file or from S3 through a presigned URL; and
files that only look like media, which fail with a reason while processing goes on."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.api.helpers import settled_status, upload_bytes, upload_id
from tests.conftest import IN_CI
from tests.media import DISGUISED, EMPTY_MP4, audio_tone, ffmpeg_installed, video_clip
from tests.support import in_process_client, metadata
from uploader.settings import Settings

pytestmark = pytest.mark.parametrize("backend", ["sqlite+local", "postgres+s3"], indirect=True)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not ffmpeg_installed():
        if IN_CI:
            pytest.fail("ffmpeg and ffprobe (Debian's ffmpeg) are required in CI")
        pytest.skip("ffmpeg is not installed")
    return tmp_path_factory.mktemp("clips")


async def send(client: httpx.AsyncClient, data: bytes, name: str, declared: str) -> str:
    meta = metadata(filename=name, filetype=declared)
    return upload_id(await upload_bytes(client, data, chunk=256 * 1024, **{"Upload-Metadata": meta}))


async def test_a_video_gets_its_facts_and_a_poster_frame(app_client: httpx.AsyncClient, clips: Path) -> None:
    uid = await send(app_client, video_clip(clips), "clip.mp4", "video/mp4")
    status = await settled_status(app_client, uid)
    assert status["state"] == "ready", status
    assert list(status["processing"]["steps"]) == ["sniff", "sha256", "media"]
    media = status["media"]
    assert media["format"].startswith("mov,mp4")
    assert media["duration"] == pytest.approx(3.0, abs=0.1)
    assert media["bitrate"] > 0
    assert media["video"] == {
        "codec": "h264", "width": 320, "height": 240, "frame_rate": 25.0, "rotation": 0,
    }  # fmt: skip
    assert media["audio"]["codec"] == "aac"
    assert media["audio"]["sample_rate"] == 44100
    variants = {v["name"]: v for v in status["variants"]}
    assert set(variants) == {"256.webp", "256.jpg", "1024.webp", "1024.jpg"}
    assert (variants["256.jpg"]["width"], variants["256.jpg"]["height"]) == (256, 192)
    assert (variants["1024.jpg"]["width"], variants["1024.jpg"]["height"]) == (320, 240)  # never enlarged
    frame = await app_client.get(variants["1024.jpg"]["url"])
    assert frame.status_code == 200
    assert Image.open(io.BytesIO(frame.content)).size == (320, 240)


async def test_a_portrait_phone_video_gets_an_upright_poster(
    app_client: httpx.AsyncClient, clips: Path
) -> None:
    uid = await send(app_client, video_clip(clips, rotate=90), "portrait.mp4", "video/mp4")
    status = await settled_status(app_client, uid)
    assert status["state"] == "ready", status
    assert status["media"]["video"]["rotation"] in (90, 270)
    poster = {v["name"]: v for v in status["variants"]}["1024.webp"]
    assert (poster["width"], poster["height"]) == (240, 320)


async def test_audio_gets_its_facts_and_no_poster(app_client: httpx.AsyncClient, clips: Path) -> None:
    uid = await send(app_client, audio_tone(clips), "tone.flac", "audio/flac")
    status = await settled_status(app_client, uid)
    assert status["state"] == "ready", status
    assert status["detected_type"] == "audio/flac"
    media = status["media"]
    assert media["duration"] == pytest.approx(2.0, abs=0.05)
    assert media["audio"] == {"codec": "flac", "sample_rate": 48000, "channels": 1}
    assert media.get("video") is None
    assert status["variants"] == []


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("truncated", "media.unreadable: "),
        ("empty", "media.unreadable: "),
        ("disguised", "media.unreadable: "),
    ],
)
async def test_what_only_looks_like_media_fails_with_a_reason(
    app_client: httpx.AsyncClient, clips: Path, kind: str, reason: str
) -> None:
    data = {
        "truncated": video_clip(clips)[:6000],  # the header and a little of the first frames
        "empty": EMPTY_MP4,
        "disguised": DISGUISED,
    }[kind]
    uid = await send(app_client, data, f"{kind}.mp4", "video/mp4")
    status = await settled_status(app_client, uid)
    assert status["state"] == "failed", status
    assert status["failure_reason"].startswith(reason), status["failure_reason"]
    assert (await app_client.get(f"/api/v1/uploads/{uid}/content")).content == data
    after = await send(app_client, audio_tone(clips), "after.flac", "audio/flac")
    assert (await settled_status(app_client, after))["state"] == "ready"


async def test_frames_over_the_pixel_limit_are_refused_before_decoding(
    settings: Settings, clips: Path
) -> None:
    async with in_process_client(settings.model_copy(update={"image_max_pixels": 10_000})) as client:
        uid = await send(client, video_clip(clips), "absurd.mp4", "video/mp4")
        status = await settled_status(client, uid)
    assert status["state"] == "failed", status
    assert status["failure_reason"].startswith("media.too_many_pixels: 320x240")
