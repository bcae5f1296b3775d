"""access: API keys kept as hashes, files counted per upload token, and the limits an
upload token put on each upload it made

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("principal", sa.String(200), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("scopes", sa.String(200), nullable=False),
        sa.Column("quota_bytes", sa.BigInteger(), nullable=True),
        sa.Column("quota_active_uploads", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "token_uses",
        sa.Column("jti", sa.String(255), primary_key=True),
        sa.Column("used", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
    )
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("allowed_types", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("size_limit", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("bytes_removed", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_index("ix_uploads_owner_state", "uploads", ["owner", "state"])


def downgrade() -> None:
    op.drop_index("ix_uploads_owner_state", table_name="uploads")
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("bytes_removed")
        batch.drop_column("size_limit")
        batch.drop_column("allowed_types")
    op.drop_table("token_uses")
    op.drop_table("api_keys")
