"""A PATCH whose body the test feeds by hand, to stop or stall it at will."""

from __future__ import annotations

import http.client
from urllib.parse import urlsplit


class HandFedPatch:
    def __init__(self, upload_url: str, offset: int, content_length: int) -> None:
        url = urlsplit(upload_url)
        self.connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        self.connection.putrequest("PATCH", url.path)
        for name, value in (
            ("Tus-Resumable", "1.0.0"),
            ("Content-Type", "application/offset+octet-stream"),
            ("Upload-Offset", str(offset)),
            ("Content-Length", str(content_length)),
        ):
            self.connection.putheader(name, value)
        self.connection.endheaders()
        self.sent = 0

    def send(self, data: bytes) -> None:
        self.connection.send(data)
        self.sent += len(data)

    def response(self) -> http.client.HTTPResponse:
        response = self.connection.getresponse()
        response.read()
        return response

    def close(self) -> None:
        self.connection.close()
