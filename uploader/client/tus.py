"""A resumable tus client over httpx, for the ``uploader`` command line.

What makes a re-run resume: every upload this machine started is remembered (by the
file's path, size and modification time, and the server) in a small JSON file under
the user's cache folder. Running the same command again asks the server for the
offset of each remembered upload (HEAD) and sends only the rest.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

TUS = {"Tus-Resumable": "1.0.0"}
READ_BLOCK = 1024 * 1024


class ClientError(Exception):
    """Something a script should see as a clear message and a non-zero exit."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "uploader"


class ResumeStore:
    """Upload URLs this machine started, by fingerprint; safe to share between threads."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or cache_dir() / "uploads.json"
        self._lock = threading.Lock()

    def _read(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.path.read_text())
            return data
        except (OSError, ValueError):
            return {}

    def get(self, key: str) -> Any:
        with self._lock:
            return self._read().get(key)

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            data = self._read()
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(json.dumps(data, indent=1))
            os.replace(partial, self.path)


def fingerprint(path: Path, server: str, parallel: int) -> str:
    stat = path.stat()
    identity = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{server}|{parallel}"
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def encode_metadata(values: dict[str, str]) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


@dataclass
class Part:
    """A byte range of the file and the tus upload that holds it."""

    start: int
    end: int
    url: str


class TusClient:
    def __init__(self, server: str, headers: dict[str, str] | None = None, timeout: float = 60) -> None:
        self.server = server.rstrip("/")
        self.http = httpx.Client(headers={**TUS, **(headers or {})}, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def _check(self, response: httpx.Response, action: str) -> httpx.Response:
        if response.status_code >= 400:
            detail = response.text[:300]
            try:
                body = response.json()
                detail = f"{body.get('code')}: {body.get('detail')}"
            except ValueError:
                pass
            raise ClientError(f"{action} failed: HTTP {response.status_code} {detail}")
        return response

    def create(self, length: int, metadata: dict[str, str], concat: str | None = None) -> str:
        headers = {"Upload-Length": str(length), "Upload-Metadata": encode_metadata(metadata)}
        if concat:
            headers["Upload-Concat"] = concat
        response = self._check(
            self.http.post(f"{self.server}/files/", headers=headers), "creating the upload"
        )
        return str(httpx.URL(self.server).join(response.headers["Location"]))

    def create_declared(self, length: int, metadata: dict[str, str], sha256: bytes) -> tuple[str, int]:
        """An upload that declares the whole file's SHA-256 (``Repr-Digest``); its URL and
        offset, which is the length when the server already held the file (deduplicated)."""
        headers = {
            "Upload-Length": str(length),
            "Upload-Metadata": encode_metadata(metadata),
            "Repr-Digest": f"sha-256=:{base64.b64encode(sha256).decode()}:",
        }
        response = self._check(
            self.http.post(f"{self.server}/files/", headers=headers), "creating the upload"
        )
        url = str(httpx.URL(self.server).join(response.headers["Location"]))
        return url, int(response.headers.get("Upload-Offset", "0"))

    def terminate(self, url: str) -> None:
        self._check(self.http.delete(url), "removing the upload")

    def concatenate(self, part_urls: list[str], metadata: dict[str, str]) -> str:
        headers = {
            "Upload-Concat": "final;" + " ".join(httpx.URL(u).path for u in part_urls),
            "Upload-Metadata": encode_metadata(metadata),
        }
        response = self._check(self.http.post(f"{self.server}/files/", headers=headers), "joining the parts")
        return str(httpx.URL(self.server).join(response.headers["Location"]))

    def offset(self, url: str) -> int | None:
        """The server's offset, or ``None`` when the upload is gone (start again)."""
        response = self.http.head(url)
        if response.status_code in (404, 410):
            return None
        self._check(response, "asking for the offset")
        return int(response.headers["Upload-Offset"])

    def send(
        self,
        path: Path,
        part: Part,
        offset: int,
        chunk_size: int,
        progress: Callable[[int], None],
    ) -> None:
        """PATCH the part's bytes from ``offset`` on, ``chunk_size`` per request;
        ``progress`` gets the bytes of the part sent so far."""
        length = part.end - part.start
        with open(path, "rb") as source:
            while offset < length:
                size = min(chunk_size, length - offset)
                body = _file_range(source, part.start + offset, size, offset, progress)
                headers = {
                    "Upload-Offset": str(offset),
                    "Content-Type": "application/offset+octet-stream",
                    "Content-Length": str(size),
                }
                response = self.http.patch(part.url, content=body, headers=headers)
                if response.status_code == 409:  # the server has another offset: continue from it
                    server_offset = self.offset(part.url)
                    if server_offset is None:
                        raise ClientError("the upload disappeared from the server")
                    offset = server_offset
                    progress(offset)
                    continue
                self._check(response, "sending bytes")
                offset = int(response.headers["Upload-Offset"])
                progress(offset)


def _file_range(
    source: Any, start: int, size: int, done: int, progress: Callable[[int], None]
) -> Iterator[bytes]:
    source.seek(start)
    left = size
    while left:
        block = source.read(min(READ_BLOCK, left))
        if not block:
            raise ClientError("the file got shorter while it was being sent")
        left -= len(block)
        done += len(block)
        progress(done)
        yield block
