"""Fixtures the integration test modules share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.stack import RedisServer


@pytest.fixture(scope="module")
def broker() -> Iterator[RedisServer]:
    """A Redis server of the module's own, which a test may stop and restart (a broker outage)."""
    server = RedisServer()
    server.start()
    yield server
    server.kill()
