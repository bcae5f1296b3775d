"""webhook outbox: each event keeps the JSON body of its deliveries, rendered once when it
is written, instead of its data (decoded and encoded again at every attempt)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

import json
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_outbox = sa.table(
    "webhook_outbox",
    sa.column("seq", sa.Integer()),
    sa.column("id", sa.String()),
    sa.column("upload_id", sa.String()),
    sa.column("owner", sa.String()),
    sa.column("type", sa.String()),
    sa.column("data", sa.JSON()),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("body", sa.Text()),
)


def _aware(value: datetime | str) -> datetime:
    if isinstance(value, str):  # SQLite hands back its text
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def upgrade() -> None:
    op.add_column("webhook_outbox", sa.Column("body", sa.Text(), nullable=True))
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(
            _outbox.c.seq,
            _outbox.c.id,
            _outbox.c.type,
            _outbox.c.created_at,
            _outbox.c.upload_id,
            _outbox.c.owner,
            _outbox.c.data,
        )
    ).all()
    for seq, event_id, event_type, created_at, upload_id, owner, data in rows:
        body = {
            "id": event_id,
            "type": event_type,
            "created_at": _aware(created_at).isoformat(),
            "upload_id": upload_id,
            "owner": owner,
            "data": data,
        }
        connection.execute(
            sa.update(_outbox)
            .where(_outbox.c.seq == seq)
            .values(body=json.dumps(body, separators=(",", ":")))
        )
    with op.batch_alter_table("webhook_outbox") as batch:
        batch.alter_column("body", existing_type=sa.Text(), nullable=False)
        batch.drop_column("data")


def downgrade() -> None:
    op.add_column("webhook_outbox", sa.Column("data", sa.JSON(), nullable=True))
    connection = op.get_bind()
    for seq, body in connection.execute(sa.select(_outbox.c.seq, _outbox.c.body)).all():
        connection.execute(
            sa.update(_outbox).where(_outbox.c.seq == seq).values(data=json.loads(body)["data"])
        )
    with op.batch_alter_table("webhook_outbox") as batch:
        batch.alter_column("data", existing_type=sa.JSON(), nullable=False)
        batch.drop_column("body")
