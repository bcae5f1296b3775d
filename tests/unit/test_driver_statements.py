"""Writes run on SQLite's driver store exactly what SQLAlchemy's own execution stores."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, insert, select, text

from uploader.db.models import ConcatRole, Upload, UploadState, metadata, uploads, webhook_outbox
from uploader.uploads import repository


def upload(upload_id: str) -> Upload:
    moment = datetime(2026, 11, 30, 12, 30, 45, 123456, tzinfo=UTC)
    return Upload(
        id=upload_id,
        owner="alice",
        state=UploadState.RECEIVING,
        length=1 << 40,
        offset=12345,
        storage_key="k" * 32,
        meta={"filename": "naïve.txt", "empty": None},
        filename="naïve.txt",
        declared_type="text/plain",
        concat_role=ConcatRole.PARTIAL,
        concat_parts=["a", "b"],
        sha256=None,
        created_at=moment,
        updated_at=moment,
        expires_at=moment,
    )


def test_insert_and_update_store_what_sqlalchemy_stores(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    metadata.create_all(engine)
    columns = [c.name for c in uploads.columns if c.name != "seq"]
    with engine.begin() as connection:
        by_driver = repository.insert(connection, upload("d" * 32))
        reference = upload("s" * 32)
        connection.execute(insert(uploads), {name: getattr(reference, name) for name in columns})
        changes = {
            "state": UploadState.READY,
            "processing": {"steps": {"sniff": {"state": "done"}}},
            "completed_at": datetime(2026, 12, 1, tzinfo=UTC),
            "expires_at": None,
        }
        repository.set_fields(connection, by_driver, **changes, updated_at=reference.updated_at)
        connection.execute(
            uploads.update().where(uploads.c.id == reference.id),
            {**changes, "updated_at": reference.updated_at},
        )
        assert not repository.set_fields_if_state(connection, by_driver, UploadState.FAILED, offset=1)
    with engine.connect() as connection:
        stored = {
            row[0]: row[1:]
            for row in connection.execute(
                text(f"SELECT id, {', '.join(f'[{c}]' for c in columns[1:])} FROM uploads")
            )
        }
        assert stored["d" * 32] == stored["s" * 32]  # the very same text in SQLite
        read_back = repository.get(connection, "d" * 32)
        assert read_back is not None
        assert read_back.seq == by_driver.seq == 1
        assert read_back.completed_at == datetime(2026, 12, 1, tzinfo=UTC)
        assert read_back.meta == {"filename": "naïve.txt", "empty": None}
        assert read_back.offset == 12345
        assert read_back.state == UploadState.READY
        assert connection.execute(select(uploads.c.seq).where(uploads.c.id == "s" * 32)).scalar() == 2


def test_outbox_rows_written_many_at_once_store_what_sqlalchemy_stores(tmp_path: Path) -> None:
    from uploader.webhooks import outbox

    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    metadata.create_all(engine)
    data = {"state": "ready", "sha256": "ab" * 32, "failure_reason": None, "name": "naïve"}
    with engine.begin() as connection:
        whole = replace(upload("d" * 32), concat_role=ConcatRole.NONE)  # parts are not reported
        outbox.record(connection, whole, [("upload.received", data), ("upload.ready", data)])
        written = connection.execute(select(webhook_outbox).order_by(webhook_outbox.c.seq)).all()
        assert [row.type for row in written] == ["upload.received", "upload.ready"]
        reference = dict(written[0]._mapping)
        reference.update(seq=None, id="reference")
        del reference["seq"]
        connection.execute(insert(webhook_outbox), reference)
    with engine.connect() as connection:
        stored = connection.execute(
            text("SELECT id, body, created_at, next_attempt_at, status FROM webhook_outbox ORDER BY seq")
        ).all()
    assert stored[0][1:] == stored[2][1:]  # the very same text in SQLite
    assert stored[0][0] != stored[1][0]  # each event its own delivery id
    # The body each delivery will POST, rendered once.
    body = json.loads(stored[0][1])
    assert body["data"] == data
    assert body["id"] == stored[0][0]
    assert body["type"] == "upload.received"


def test_rows_written_many_at_once_each_get_their_own_values(tmp_path: Path) -> None:
    """One moment bound to several rows is converted once; other moments are not taken for it."""
    from uploader.webhooks import outbox

    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    metadata.create_all(engine)
    first = datetime(2026, 12, 1, 8, 0, 0, 1, tzinfo=UTC)
    second = datetime(2026, 12, 2, 9, 30, 0, 2, tzinfo=UTC)
    with engine.begin() as connection:
        whole = replace(upload("d" * 32), concat_role=ConcatRole.NONE)
        outbox.record(
            connection, whole, [("upload.received", {}), ("upload.ready", {}), ("upload.ready", {})]
        )
        outbox._DELIVERED.execute_many(
            connection, [{"row": 1, "now": first}, {"row": 2, "now": second}, {"row": 3, "now": first}]
        )
        delivered = connection.execute(
            select(webhook_outbox.c.delivered_at).order_by(webhook_outbox.c.seq)
        ).scalars()
        assert list(delivered) == [first, second, first]
