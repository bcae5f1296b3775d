"""uploads: the protocol an upload came by (tus, ietf, form, s3-direct), shown in its
status; the SHA-256 a client declared for the whole file (Repr-Digest), checked when it
completes; and an index to find an owner's upload by its SHA-256 (deduplication)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("uploads", sa.Column("protocol", sa.String(16), nullable=True))
    op.add_column("uploads", sa.Column("declared_sha256", sa.String(64), nullable=True))
    op.create_index("ix_uploads_owner_sha256", "uploads", ["owner", "sha256"])


def downgrade() -> None:
    op.drop_index("ix_uploads_owner_sha256", table_name="uploads")
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("declared_sha256")
        batch.drop_column("protocol")
