"""usage per principal (bytes held, unfinished uploads), kept by triggers on uploads

Every change of an upload row adjusts its owner's row in the same transaction, whatever
statement made it, so the quota check reads one row instead of summing the owner's
uploads (which grew with every file it ever kept).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def held(row: str) -> str:
    """Bytes an upload row holds: none once gone or its bytes removed; its declared length,
    else what has arrived."""
    return (
        f"(CASE WHEN {row}.state IN ('expired', 'terminated') OR {row}.bytes_removed THEN 0 "
        f'WHEN {row}.length IS NOT NULL THEN {row}.length ELSE {row}."offset" END)'
    )


def active(row: str) -> str:
    return f"(CASE WHEN {row}.state IN ('created', 'receiving') THEN 1 ELSE 0 END)"


SQLITE_TRIGGERS = [
    f"""CREATE TRIGGER uploads_usage_insert AFTER INSERT ON uploads
    WHEN {held("new")} <> 0 OR {active("new")} <> 0
    BEGIN
        INSERT INTO principal_usage (owner, bytes, active_uploads)
        VALUES (new.owner, {held("new")}, {active("new")})
        ON CONFLICT (owner) DO UPDATE SET bytes = bytes + excluded.bytes,
            active_uploads = active_uploads + excluded.active_uploads;
    END""",
    f"""CREATE TRIGGER uploads_usage_update AFTER UPDATE OF state, length, "offset", bytes_removed ON uploads
    WHEN {held("new")} <> {held("old")} OR {active("new")} <> {active("old")}
    BEGIN
        INSERT INTO principal_usage (owner, bytes, active_uploads)
        VALUES (new.owner, {held("new")} - {held("old")}, {active("new")} - {active("old")})
        ON CONFLICT (owner) DO UPDATE SET bytes = bytes + excluded.bytes,
            active_uploads = active_uploads + excluded.active_uploads;
    END""",
    f"""CREATE TRIGGER uploads_usage_delete AFTER DELETE ON uploads
    WHEN {held("old")} <> 0 OR {active("old")} <> 0
    BEGIN
        UPDATE principal_usage SET bytes = bytes - {held("old")},
            active_uploads = active_uploads - {active("old")}
        WHERE owner = old.owner;
    END""",
]

POSTGRES_FUNCTION = f"""
CREATE FUNCTION uploads_usage() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    d_bytes bigint := 0;
    d_active integer := 0;
    who text;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        d_bytes := d_bytes - {held("OLD")};
        d_active := d_active - {active("OLD")};
        who := OLD.owner;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        d_bytes := d_bytes + {held("NEW")};
        d_active := d_active + {active("NEW")};
        who := NEW.owner;
    END IF;
    IF d_bytes <> 0 OR d_active <> 0 THEN
        INSERT INTO principal_usage AS u (owner, bytes, active_uploads) VALUES (who, d_bytes, d_active)
        ON CONFLICT (owner) DO UPDATE SET bytes = u.bytes + EXCLUDED.bytes,
            active_uploads = u.active_uploads + EXCLUDED.active_uploads;
    END IF;
    RETURN NULL;
END
$$"""


def upgrade() -> None:
    op.create_table(
        "principal_usage",
        sa.Column("owner", sa.String(200), primary_key=True),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("active_uploads", sa.Integer(), nullable=False),
    )
    op.execute(
        "INSERT INTO principal_usage (owner, bytes, active_uploads) "
        f"SELECT owner, SUM({held('uploads')}), SUM({active('uploads')}) FROM uploads GROUP BY owner"
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(POSTGRES_FUNCTION)
        op.execute(
            "CREATE TRIGGER uploads_usage AFTER INSERT OR UPDATE OR DELETE ON uploads "
            "FOR EACH ROW EXECUTE FUNCTION uploads_usage()"
        )
    else:
        for statement in SQLITE_TRIGGERS:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS uploads_usage ON uploads")
        op.execute("DROP FUNCTION IF EXISTS uploads_usage()")
    else:
        for name in ("uploads_usage_insert", "uploads_usage_update", "uploads_usage_delete"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_table("principal_usage")
