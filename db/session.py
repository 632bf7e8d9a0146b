"""Database engine and sessions, built once per process from the settings."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from core.settings import get_settings

log = logging.getLogger(__name__)
T = TypeVar("T")
_engine: Engine | None = None
# Set by use_database (the app factory); until then the process's settings name the database.
_url: str | None = None
_factory: sessionmaker[Session] | None = None


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets the API read while a worker writes; busy_timeout waits out the writer's lock.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for `url`, with SQLite set up for one writer and many readers."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


def use_database(url: str) -> None:
    """Connect to `url` from now on; the engine is built at the first session."""
    global _url
    if url != _url:
        dispose_engine()
        _url = url


def get_engine() -> Engine:
    global _engine, _factory
    if _engine is None:
        _engine = make_engine(_url or get_settings().database_url)
        _factory = sessionmaker(_engine, expire_on_commit=False)
    return _engine


def dispose_engine() -> None:
    """Drop pooled connections (after a fork, or when the settings change)."""
    global _engine, _factory
    if _engine is not None:
        _engine.dispose(close=False)
    _engine = None
    _factory = None


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    get_engine()
    assert _factory is not None
    session = _factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def is_transient(error: BaseException) -> bool:
    """A database error that may pass if the same write is tried again: SQLite busy, a dropped connection."""
    return isinstance(error, OperationalError) or (
        isinstance(error, DBAPIError) and error.connection_invalidated
    )


class StillFailing(Exception):
    """A write kept failing with transient database errors after every retry."""


def retrying(write: Callable[[], T], attempts: int = 4, first_wait: float = 0.2) -> T:
    """Run `write` (which opens its own session), again after a transient error, waiting 0.2, 0.4, 0.8 s.

    `write` must be safe to repeat: a commit whose answer was lost may have happened.
    Raises StillFailing once every attempt failed.
    """
    failures = 0
    while True:
        try:
            return write()
        except Exception as exc:  # noqa: BLE001 — only transient errors are retried
            failures += 1
            if not is_transient(exc):
                raise
            if failures >= attempts:
                raise StillFailing(f"{type(exc).__name__} {failures} times in a row") from exc
            log.warning("transient database error (%s), trying again", type(exc).__name__)
            time.sleep(first_wait * 2 ** (failures - 1))
