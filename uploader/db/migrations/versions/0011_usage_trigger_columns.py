"""usage per principal on PostgreSQL: the trigger runs only for the columns usage counts,
and adds to the owner's row with a plain update

Every write's claim (its generation and whether a write is open) and every processing
step's record changed no counted column, yet ran the trigger's function; SQLite's
triggers already fire only for these columns. The owner's row nearly always exists, so
the function updates it first and inserts only when there is none (an insert that finds
its row is a speculative insertion, then an update).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from importlib import import_module

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_usage = import_module("uploader.db.migrations.versions.0005_principal_usage")

COUNTED = 'state, length, "offset", bytes_removed'

_UPSERT = (
    "        INSERT INTO principal_usage AS u (owner, bytes, active_uploads) "
    "VALUES (who, d_bytes, d_active)\n"
    "        ON CONFLICT (owner) DO UPDATE SET bytes = u.bytes + EXCLUDED.bytes,\n"
    "            active_uploads = u.active_uploads + EXCLUDED.active_uploads;\n"
)
_UPDATE_FIRST = (
    "        UPDATE principal_usage SET bytes = bytes + d_bytes, active_uploads = active_uploads + d_active\n"
    "        WHERE owner = who;\n"
    "        IF NOT FOUND THEN\n" + _UPSERT + "        END IF;\n"
)
assert _UPSERT in _usage.POSTGRES_FUNCTION
# 0005's function, its deltas unchanged, adding to the owner's row by an update first.
FUNCTION = _usage.POSTGRES_FUNCTION.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1).replace(
    _UPSERT, _UPDATE_FIRST
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite's triggers (0005) already fire for these columns only
    op.execute(FUNCTION)
    op.execute("DROP TRIGGER uploads_usage ON uploads")
    op.execute(
        f"CREATE TRIGGER uploads_usage AFTER INSERT OR DELETE OR UPDATE OF {COUNTED} ON uploads "
        "FOR EACH ROW EXECUTE FUNCTION uploads_usage()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER uploads_usage ON uploads")
    op.execute(_usage.POSTGRES_FUNCTION.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
    op.execute(
        "CREATE TRIGGER uploads_usage AFTER INSERT OR UPDATE OR DELETE ON uploads "
        "FOR EACH ROW EXECUTE FUNCTION uploads_usage()"
    )
