"""Fencing: a lock holder's generation, its own check, and the record that refuses it."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from uploader.db.engine import Database
from uploader.db.migrate import upgrade_to_head
from uploader.db.models import Upload, UploadState
from uploader.settings import Settings
from uploader.uploads import repository
from uploader.uploads.locks import Generations, LeaseLost, LockHolder
from uploader.uploads.service import UploadService


def test_generations_grow_even_when_asked_faster_than_the_clock() -> None:
    generations = Generations()
    taken = [generations.next() for _ in range(1000)]
    assert taken == sorted(set(taken))
    assert taken[0] >= time.time_ns() // 1000 - 10_000_000


def test_a_holder_whose_lease_ran_out_stops_and_is_interrupted() -> None:
    holder = LockHolder(generation=1)
    interrupted: list[bool] = []
    holder.on_interrupt(lambda: interrupted.append(True))
    holder.check()  # no lease: an in-process hold never runs out
    holder.valid_until = time.monotonic() + 60
    holder.check()
    holder.valid_until = time.monotonic() - 0.001
    with pytest.raises(LeaseLost):
        holder.check()
    assert interrupted == [True]
    assert holder.lost


async def test_records_of_an_older_generation_or_of_a_removed_upload_are_refused(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fence.db'}"
    upgrade_to_head(url)
    db = Database(url)
    try:
        upload = Upload(id="a" * 32, owner="o", storage_key="b" * 32, length=100)
        await db.run(lambda c: repository.insert(c, upload))
        assert await db.run(lambda c: repository.record_write(c, upload, 10, offset=5))
        claimed = await db.run(lambda c: repository.claim_for_writing(c, upload.id, 20))
        assert claimed is not None
        newer, left_open = claimed
        assert (newer.writer_generation, newer.writer_active, left_open) == (20, True, False)
        # The older writer can record nothing more; the newer one can.
        assert not await db.run(lambda c: repository.record_write(c, upload, 10, offset=50))
        assert await db.run(lambda c: repository.record_write(c, newer, 20, offset=6))
        # A claim never lowers the generation.
        stale = await db.run(lambda c: repository.claim_for_writing(c, upload.id, 15))
        assert stale is not None
        assert stale[0].writer_generation == 20
        # The write of generation 20 never recorded its end: the next claim is told so.
        taking_over = await db.run(lambda c: repository.claim_for_writing(c, upload.id, 25))
        assert taking_over is not None
        assert taking_over[1] is True
        newer = taking_over[0]
        assert await db.run(lambda c: repository.record_write(c, newer, 25, offset=7, writer_active=False))
        after_end = await db.run(lambda c: repository.claim_for_writing(c, upload.id, 26))
        assert after_end is not None
        assert after_end[1] is False
        newer = after_end[0]
        await db.run(lambda c: repository.set_fields(c, newer, state=UploadState.TERMINATED))
        assert not await db.run(lambda c: repository.record_write(c, newer, 30, offset=9))
        final = await db.run(lambda c: repository.get(c, upload.id))
        assert final is not None
        assert (final.offset, final.state) == (7, UploadState.TERMINATED)
    finally:
        await db.dispose()


@pytest.mark.parametrize(
    ("distributed", "excludes_writers", "inline"),
    [(False, False, True), (True, True, True), (True, False, False)],
)
def test_the_digest_of_what_arrived_is_kept_only_where_no_stale_writer_can_land_bytes(
    tmp_path: Path, distributed: bool, excludes_writers: bool, inline: bool
) -> None:
    locker: Any = SimpleNamespace(distributed=distributed)
    store: Any = SimpleNamespace(excludes_writers=excludes_writers)
    service = UploadService(
        Settings(data_dir=tmp_path), Database(f"sqlite:///{tmp_path / 'x.db'}"), store, locker
    )
    upload = Upload(id="a" * 32, owner="o", storage_key="b" * 32, length=1000)
    assert service._digest_inline(upload) is inline
