"""The one check every fault scenario ends with, over every upload of a deployment.

For each upload row: its state, offset and length agree with each other and with the
bytes in storage; a recorded sha256 is that of the stored bytes; nothing that is
complete holds bytes no client sent, in offset order; and an incomplete upload promises
no download. And what each owner holds by its usage row (the quota's count) is what its
upload rows add up to.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
from sqlalchemy import select

from uploader.db.engine import Database
from uploader.db.models import COMPLETE_STATES, GONE_STATES, Upload, UploadState, principal_usage, uploads
from uploader.settings import Settings
from uploader.storage.local import LocalUpload
from uploader.storage.registry import build_store

Candidates = Mapping[str, Sequence[bytes]]


async def _stored(settings: Settings, upload: Upload, end: int) -> bytes | None:
    """Bytes ``[0, end)`` of the upload, or None where the backend cannot tell (S3 parts)."""
    store = build_store(settings)
    stored = await store.find(upload.storage_key)
    if not upload.is_complete:
        if not isinstance(stored, LocalUpload):
            return None  # an unfinished S3 upload is parts, not an object to read
        return _read_head(stored.path, end)
    await store.start()
    try:
        return b"".join([block async for block in stored.reader(0, end)])
    finally:
        await store.close()


def _read_head(path: Path, end: int) -> bytes:
    if not path.exists():
        return b""
    with open(path, "rb") as file:
        return file.read(end)


async def check_invariant(
    settings: Settings,
    sent: Candidates,
    server_url: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> list[Upload]:
    """Raise AssertionError naming every upload that breaks the invariant; return the rows.

    ``sent``: for each upload id the test knows, every content some client sent for it
    (whole files). An upload missing from ``sent`` is only checked for consistency.
    """
    db = Database(settings.resolved_database_url)
    try:
        rows = await db.run(lambda c: [Upload(**r._mapping) for r in c.execute(select(uploads))])
        kept = await db.run(lambda c: list(c.execute(select(principal_usage))))
    finally:
        await db.dispose()
    problems: list[str] = _usage_problems(rows, kept)
    client = (
        httpx.AsyncClient(base_url=server_url, headers=dict(headers or {}), timeout=30)
        if server_url
        else None
    )
    try:
        for upload in rows:
            problems += await _check_one(settings, upload, sent.get(upload.id), client)
    finally:
        if client is not None:
            await client.aclose()
    assert not problems, "invariant broken:\n" + "\n".join(problems)
    return rows


def _usage_problems(rows: Sequence[Upload], kept: Sequence[object]) -> list[str]:
    summed: dict[str, tuple[int, int]] = {}
    for upload in rows:
        gone = upload.is_gone or upload.bytes_removed
        held = 0 if gone else (upload.length if upload.length is not None else upload.offset)
        active = 1 if upload.state in (UploadState.CREATED, UploadState.RECEIVING) else 0
        before = summed.get(upload.owner, (0, 0))
        summed[upload.owner] = (before[0] + held, before[1] + active)
    recorded = {row.owner: (row.bytes, row.active_uploads) for row in kept}  # type: ignore[attr-defined]
    return [
        f"usage of {owner!r}: {recorded.get(owner, (0, 0))} recorded, {counted} in its uploads"
        for owner in set(summed) | set(recorded)
        if recorded.get(owner, (0, 0)) != (counted := summed.get(owner, (0, 0)))
    ]


async def _check_one(
    settings: Settings, upload: Upload, candidates: Sequence[bytes] | None, client: httpx.AsyncClient | None
) -> list[str]:
    name = f"{upload.id} ({upload.state}, offset {upload.offset}, length {upload.length})"
    problems: list[str] = []
    if upload.length is not None and upload.offset > upload.length:
        problems.append(f"{name}: offset past length")
    if upload.state in GONE_STATES:
        if client is not None:
            status = (await client.get(f"/api/v1/uploads/{upload.id}/content")).status_code
            if status == 200:
                problems.append(f"{name}: gone, but its download answers 200")
        return problems
    if upload.state == UploadState.FAILED and upload.completed_at is None:
        # Failed before its bytes were whole (a refused concatenation): nothing to serve.
        if client is not None:
            status = (await client.get(f"/api/v1/uploads/{upload.id}/content")).status_code
            if status == 200:
                problems.append(f"{name}: failed without bytes, but its download answers 200")
        return problems
    complete = upload.state in COMPLETE_STATES
    if complete and upload.offset != upload.length:
        problems.append(f"{name}: complete with offset != length")
    if not complete and upload.length is not None and upload.offset == upload.length and upload.length:
        problems.append(f"{name}: every byte recorded but not complete (a client believes it is done)")
    if upload.state not in {*COMPLETE_STATES, UploadState.CREATED, UploadState.RECEIVING}:
        problems.append(f"{name}: unknown state")
    stored = await _stored(settings, upload, upload.offset)
    if stored is not None:
        if len(stored) < upload.offset:
            problems.append(f"{name}: storage holds {len(stored)} bytes, fewer than the offset")
        elif upload.sha256 is not None and complete and hashlib.sha256(stored).hexdigest() != upload.sha256:
            problems.append(f"{name}: sha256 is not that of the stored bytes")
        if candidates is not None and not any(stored == c[: upload.offset] for c in candidates):
            problems.append(f"{name}: stored bytes are not what any client sent, in offset order")
        if candidates is not None and complete and not any(len(c) == upload.offset for c in candidates):
            problems.append(f"{name}: complete at a length no client sent")
    if client is not None:
        response = await client.get(f"/api/v1/uploads/{upload.id}/content")
        if complete and upload.concat_role != "partial" and response.status_code != 200:
            problems.append(f"{name}: complete, but its download answers {response.status_code}")
        if response.status_code == 200 and stored is not None and response.content != stored:
            problems.append(f"{name}: the download differs from the stored bytes")
        if not complete and response.status_code == 200:
            problems.append(f"{name}: incomplete, but its download answers 200")
    return problems


def assert_invariant(
    settings: Settings,
    sent: Candidates,
    server_url: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> list[Upload]:
    """``check_invariant`` for tests that are not coroutines."""
    from tests.conftest import run_in_thread

    return run_in_thread(check_invariant(settings, sent, server_url, headers))
