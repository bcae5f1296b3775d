"""``uploader upload | status | watch | download``: the service from a terminal or a script.

Standard output carries results only (an upload's URL, a status document, a final
state), so scripts can capture them; progress bars and messages go to standard error.
Exit codes: 0 done, 1 the server refused or processing failed, 3 the server cannot be
reached, 130 interrupted (run the same command again to resume).
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from uploader.client.tus import ClientError, Part, ResumeStore, TusClient, fingerprint

EXIT_OK, EXIT_FAILED, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 3, 130
MIN_PART = 5 * 1024 * 1024  # smaller files go up in one part, whatever --parallel says
RETRIES = 5
HASH_BLOCK = 4 * 1024 * 1024
_ID = re.compile(r"([0-9a-f]{32})/?(?:[?#].*)?$")
TERMINAL = {"upload.ready", "upload.failed", "upload.rejected", "upload.expired", "upload.terminated"}

stderr = Console(stderr=True, soft_wrap=True, highlight=False)  # messages stay one line for scripts


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]i?B?|B)?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"not a size: {text!r} (e.g. 8MiB, 512KiB, 1048576)")
    unit = (match.group(2) or "B").upper().rstrip("B").rstrip("I")
    return int(match.group(1)) * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[unit]


def parse_duration(text: str) -> timedelta:
    match = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text, re.IGNORECASE)
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"not a duration: {text!r} (e.g. 90s, 15m, 1h, 7d)")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2).lower()]
    return timedelta(seconds=int(match.group(1)) * unit)


def upload_id_of(text: str) -> str:
    match = _ID.search(text.strip())
    if not match:
        raise ClientError(f"not an upload id or URL: {text!r}", EXIT_FAILED)
    return match.group(1)


def _auth(api_key: str | None) -> dict[str, str]:
    key = api_key or os.environ.get("UPLOADER_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}", justify="left"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=stderr,
        transient=False,
    )


def run(action: Callable[[], int]) -> int:
    """Run a command, turning the failures scripts care about into messages and exit codes."""
    try:
        return action()
    except KeyboardInterrupt:
        stderr.print("[yellow]interrupted[/]: run the same command again to resume")
        return EXIT_INTERRUPTED
    except ClientError as exc:
        stderr.print(f"[red]error[/]: {exc}")
        return exc.exit_code
    except httpx.TransportError as exc:
        stderr.print(f"[red]error[/]: cannot reach the server ({type(exc).__name__}: {exc})")
        return EXIT_UNREACHABLE


# -- upload --------------------------------------------------------------------------------


def upload(
    files: list[Path],
    server: str,
    chunk_size: int,
    parallel: int,
    watch: bool,
    api_key: str | None,
    dedup: bool = False,
) -> int:
    for path in files:
        if not path.is_file():
            raise ClientError(f"{path}: no such file", EXIT_FAILED)
    client = TusClient(server, _auth(api_key))
    store = ResumeStore()
    failed = False
    try:
        with _progress() as bars:
            for path in files:
                url = _upload_one(client, store, bars, path, chunk_size, parallel, dedup)
                print(url, flush=True)
                if watch and _watch(client.http, server, upload_id_of(url)) != "ready":
                    failed = True
    finally:
        client.close()
    return EXIT_FAILED if failed else EXIT_OK


def _sha256_of(path: Path, bars: Progress) -> bytes:
    """The file's SHA-256, read in large blocks (hashlib releases the GIL), with a bar."""
    digest = hashlib.sha256()
    block = bytearray(HASH_BLOCK)
    view = memoryview(block)
    task = bars.add_task(f"hashing {path.name}", total=path.stat().st_size)
    with open(path, "rb", buffering=0) as source:
        while count := source.readinto(block):
            digest.update(view[:count])
            bars.advance(task, count)
    bars.remove_task(task)
    return digest.digest()


def _upload_one(
    client: TusClient,
    store: ResumeStore,
    bars: Progress,
    path: Path,
    chunk_size: int,
    parallel: int,
    dedup: bool = False,
) -> str:
    size = path.stat().st_size
    parallel = max(1, min(parallel, size // MIN_PART or 1))
    key = fingerprint(path, client.server, parallel)
    metadata = {
        "filename": path.name,
        "filetype": mimetypes.guess_type(path.name)[0] or "application/octet-stream",
    }
    saved: dict[str, Any] = store.get(key) or {}
    probe: tuple[str, int] | None = None
    if dedup and not saved:  # resuming means the server did not have it
        probe = client.create_declared(size, metadata, _sha256_of(path, bars))
        if probe[1] == size:
            stderr.print(f"{path.name}: already on the server, nothing to send")
            return probe[0]
        if parallel > 1:  # the parts are uploads of their own: this one is not needed
            client.terminate(probe[0])
            probe = None
    task = bars.add_task(path.name, total=size)
    done = [0] * parallel
    lock = threading.Lock()

    def tracker(index: int) -> Callable[[int], None]:
        def update(sent: int) -> None:
            with lock:
                done[index] = sent
                bars.update(task, completed=sum(done))

        return update

    if parallel == 1:
        url, offset = probe or _resume_or_create(client, saved.get("url"), size, metadata, None)
        store.put(key, {"url": url})
        _send_with_retries(client, path, Part(0, size, url), offset, chunk_size, tracker(0))
    else:
        bounds = [size * i // parallel for i in range(parallel + 1)]
        known = saved.get("parts") or [None] * parallel
        resumed = [
            _resume_or_create(client, known[i], bounds[i + 1] - bounds[i], {}, "partial")
            for i in range(parallel)
        ]
        parts = [Part(bounds[i], bounds[i + 1], part_url) for i, (part_url, _) in enumerate(resumed)]
        store.put(key, {"parts": [p.url for p in parts]})
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            jobs = [
                pool.submit(_send_with_retries, client, path, part, offset, chunk_size, tracker(i))
                for i, (part, (_, offset)) in enumerate(zip(parts, resumed, strict=True))
            ]
            for job in jobs:
                job.result()
        url = client.concatenate([p.url for p in parts], metadata)
    store.put(key, None)  # done: the same command later means a new upload
    bars.update(task, completed=size)
    return url


def _resume_or_create(
    client: TusClient, url: str | None, length: int, metadata: dict[str, str], concat: str | None
) -> tuple[str, int]:
    """The remembered upload and its offset on the server, or a new upload at 0."""
    offset = client.offset(url) if url is not None else None
    if url is not None and offset is not None:
        return url, offset
    return client.create(length, metadata, concat), 0


def _send_with_retries(
    client: TusClient,
    path: Path,
    part: Part,
    offset: int,
    chunk_size: int,
    progress: Callable[[int], None],
) -> None:
    """Send the part from ``offset``; after a lost connection, ask the server where to go on."""
    for attempt in range(RETRIES + 1):
        try:
            if attempt:
                known = client.offset(part.url)
                if known is None:
                    raise ClientError(f"{part.url} is gone from the server; run the command again")
                offset = known
            progress(offset)
            client.send(path, part, offset, chunk_size, progress)
            return
        except httpx.TransportError as exc:
            if attempt == RETRIES:
                raise
            delay = min(30.0, 2.0**attempt)
            stderr.print(f"[yellow]connection lost[/] ({exc}); resuming in {delay:.0f} s")
            time.sleep(delay)


# -- status, watch, download ------------------------------------------------------------------


def status(target: str, server: str, api_key: str | None) -> int:
    upload_id = upload_id_of(target)
    with httpx.Client(headers=_auth(api_key), timeout=30) as http:
        response = http.get(f"{server.rstrip('/')}/api/v1/uploads/{upload_id}")
    if response.status_code == 404:
        raise ClientError(f"no upload {upload_id}")
    if response.status_code >= 400:
        raise ClientError(f"HTTP {response.status_code}: {response.text[:300]}")
    print(json.dumps(response.json(), indent=2))
    return EXIT_OK


def watch(target: str, server: str, api_key: str | None) -> int:
    with httpx.Client(headers=_auth(api_key), timeout=30) as http:
        state = _watch(http, server, upload_id_of(target))
    print(state)
    return EXIT_OK if state == "ready" else EXIT_FAILED


def _watch(http: httpx.Client, server: str, upload_id: str) -> str:
    """Follow an upload's events until it ends; show them live; return the final state."""
    url = f"{server.rstrip('/')}/api/v1/uploads/{upload_id}/events"
    last_id: str | None = None
    state = "unknown"
    with stderr.status(f"{upload_id[:8]}: waiting for events") as line:
        while True:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                with http.stream(
                    "GET", url, headers=headers, timeout=httpx.Timeout(30, read=None)
                ) as response:
                    if response.status_code == 404:
                        raise ClientError(f"no upload {upload_id}")
                    event_type = ""
                    for text in response.iter_lines():
                        if text.startswith("id: "):
                            last_id = text[4:]
                        elif text.startswith("event: "):
                            event_type = text[7:]
                        elif text.startswith("data: "):
                            data = json.loads(text[6:])
                            state = data.get("state", state)
                            line.update(f"{upload_id[:8]}: {_describe(event_type, data)}")
                            if event_type in TERMINAL:
                                reason = data.get("failure_reason")
                                stderr.print(f"{upload_id[:8]}: {state}" + (f" ({reason})" if reason else ""))
                                return str(state)
            except httpx.TransportError:
                time.sleep(1)  # reconnect with Last-Event-ID: nothing is missed


def _describe(event_type: str, data: dict[str, Any]) -> str:
    if event_type == "upload.progress" and data.get("length"):
        return f"receiving {100 * data['offset'] / data['length']:.0f}%"
    if event_type.startswith("processing.step"):
        progress = f" {100 * data['progress']:.0f}%" if "progress" in data else ""
        return f"processing: {data.get('step')}{progress}"
    if event_type == "variant.ready":
        return f"variant {data['variant']['name']} ready"
    return event_type.removeprefix("upload.")


def download(target: str, server: str, variant: str | None, output: Path | None, api_key: str | None) -> int:
    """Resumable: bytes go to ``<output>.part``, continued with Range and If-Range."""
    upload_id = upload_id_of(target)
    base = f"{server.rstrip('/')}/api/v1/uploads/{upload_id}"
    url = f"{base}/variants/{variant}" if variant else f"{base}/content"
    with httpx.Client(
        headers=_auth(api_key), timeout=httpx.Timeout(30, read=300), follow_redirects=True
    ) as http:
        head = http.head(url)
        if head.status_code >= 400:
            raise ClientError(f"cannot download {upload_id}: HTTP {head.status_code}")
        target_path = output or Path(_filename(head.headers.get("content-disposition")) or upload_id)
        partial = target_path.with_name(target_path.name + ".part")
        etag_file = target_path.with_name(target_path.name + ".part.etag")
        etag = head.headers.get("etag", "")
        have = partial.stat().st_size if partial.exists() and etag_file.exists() else 0
        if have and etag_file.read_text() != etag:
            have = 0  # the remote file changed: start over
        headers = {"Range": f"bytes={have}-", "If-Range": etag} if have else {}
        etag_file.write_text(etag)
        total = int(head.headers.get("content-length", 0))
        with _progress() as bars, http.stream("GET", url, headers=headers) as response:
            if response.status_code >= 400:
                raise ClientError(f"cannot download {upload_id}: HTTP {response.status_code}")
            resumed = response.status_code == 206
            task = bars.add_task(target_path.name, total=total, completed=have if resumed else 0)
            with open(partial, "ab" if resumed else "wb") as out:
                for block in response.iter_bytes(1024 * 1024):
                    out.write(block)
                    bars.advance(task, len(block))
        os.replace(partial, target_path)
        etag_file.unlink(missing_ok=True)
    print(target_path)
    return EXIT_OK


def _filename(disposition: str | None) -> str | None:
    if not disposition:
        return None
    match = re.search(r"filename\*=UTF-8''([^;]+)", disposition)
    if match:
        return Path(unquote(match.group(1))).name or None
    match = re.search(r'filename="([^"]+)"', disposition)
    return Path(match.group(1)).name if match else None


def server_url(explicit: str | None) -> str:
    return explicit or os.environ.get("UPLOADER_URL") or "http://127.0.0.1:8000"
