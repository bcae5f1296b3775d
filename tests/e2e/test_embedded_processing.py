"""The embedded default (no Redis, no worker) runs the same pipeline end to end."""

from __future__ import annotations

import httpx
import pytest

from tests.images import is_upright, jpeg
from tests.sse import create, watch_while_sending
from tests.support import LiveServer

pytestmark = pytest.mark.e2e


def test_embedded_default_processes_a_photo_without_redis(live_server: LiveServer) -> None:
    assert "UPLOADER_REDIS_URL" not in live_server.env
    data = jpeg(2000, 1200, orientation=8)
    url = create(live_server, len(data))
    seen = watch_while_sending(live_server, url, data, chunk=128 * 1024)
    types = [e.type for e in seen]
    assert types[-1] == "upload.ready"
    assert types.count("variant.ready") == 4
    status = httpx.get(f"{live_server.url}/api/v1/uploads/{url.rsplit('/', 1)[-1]}").json()
    assert status["state"] == "ready"
    assert (status["media"]["width"], status["media"]["height"]) == (2000, 1200)
    for variant in status["variants"]:
        picture = httpx.get(f"{live_server.url}{variant['url']}")
        assert picture.status_code == 200
        assert is_upright(picture.content)
