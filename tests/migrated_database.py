"""A migrated PostgreSQL database of a test module's own, and an engine on it (tests of db/ code alone)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from db.migrate import upgrade
from db.session import make_engine
from tests.stack import create_pg_database, drop_pg_database


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    url = create_pg_database()
    upgrade(url)
    yield url
    drop_pg_database(url)


@pytest.fixture(scope="module")
def engine(database) -> Iterator[Engine]:
    engine = make_engine(database)
    yield engine
    engine.dispose()
