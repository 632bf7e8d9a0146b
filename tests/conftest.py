"""Fixtures: the real stack on PostgreSQL + Redis, models and data made on the spot."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack import (
    Stack,
    claim_redis_db,
    create_pg_database,
    drop_pg_database,
    free_port,
    release_redis_db,
)

warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.jit")


def stack_env(home: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIFTSCORE_")}
    env.update({
        "SHIFTSCORE_HOME": str(home),
        "SHIFTSCORE_PROGRESS_INTERVAL": "0.1",
        "SHIFTSCORE_BATCH_SIZE": "128",
    })
    env.update(overrides)
    return env


@pytest.fixture(scope="session")
def pg_stack(tmp_path_factory) -> Iterator[Stack]:
    """API + one worker on this machine's PostgreSQL and Redis, in fresh namespaces."""
    home = tmp_path_factory.mktemp("pg-stack")
    database_url = create_pg_database()
    broker_url = claim_redis_db()
    stack = Stack(
        env=stack_env(home, SHIFTSCORE_DATABASE_URL=database_url, SHIFTSCORE_BROKER_URL=broker_url),
        port=free_port(),
        log_dir=home,
    )
    try:
        stack.migrate()
        stack.start_api()
        stack.start_worker()
        stack.start_scheduler()
        yield stack
    finally:
        stack.stop()
        drop_pg_database(database_url)
        release_redis_db(broker_url)


@pytest.fixture(scope="session")
def digits_model_file(tmp_path_factory) -> Path:
    """A trained digits CNN saved as TorchScript."""
    from tests.models import save_torchscript, trained_digits_cnn

    return save_torchscript(trained_digits_cnn(), tmp_path_factory.mktemp("models") / "digits_cnn.pt")
