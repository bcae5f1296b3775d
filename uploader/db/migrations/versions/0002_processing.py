"""processing results: detected type, step progress, image facts, variants

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("detected_type", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("processing", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("media", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("variants", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("variants")
        batch.drop_column("media")
        batch.drop_column("processing")
        batch.drop_column("detected_type")
