"""Access control runs on SQLite and on PostgreSQL, with local storage."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["sqlite+local", "postgres+local"])
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    database, storage = request.param.split("+")
    return database, storage
