"""Apply Alembic migrations programmatically (``uploader migrate`` and start-up)."""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config

_HERE = Path(__file__).parent


def alembic_config(database_url: str) -> Config:
    config = Config(str(_HERE / "alembic.ini"))
    config.set_main_option("script_location", str(_HERE / "migrations"))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade_to_head(database_url: str) -> None:
    """Migrate to the newest revision; safe to call from inside a running event loop."""
    migrate_to(database_url, "head")


def migrate_to(database_url: str, revision: str, *, down: bool = False) -> None:
    """Upgrade (or with ``down``, downgrade) to ``revision``."""
    if database_url.startswith("sqlite"):
        path = database_url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    errors: list[BaseException] = []
    step = command.downgrade if down else command.upgrade

    def run() -> None:
        try:
            step(alembic_config(database_url), revision)
        except BaseException as exc:
            errors.append(exc)

    # env.py drives an async engine with asyncio.run, which needs a thread without a loop.
    thread = threading.Thread(target=run, name="alembic-upgrade")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
