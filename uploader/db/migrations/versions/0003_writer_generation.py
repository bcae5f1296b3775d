"""fencing: the lock generation of an upload's last writer and whether its write is open;
index for pruning tombstones

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("writer_generation", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("writer_active", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_index("ix_uploads_state_updated_at", "uploads", ["state", "updated_at"])


def downgrade() -> None:
    op.drop_index("ix_uploads_state_updated_at", table_name="uploads")
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("writer_active")
        batch.drop_column("writer_generation")
