"""The real service for the benchmarks: gunicorn API + Celery worker on PostgreSQL and Redis."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from tests.stack import (
    Stack,
    claim_redis_db,
    create_pg_database,
    drop_pg_database,
    free_port,
    release_redis_db,
)


@contextmanager
def real_stack(workers: int = 1, **overrides: str) -> Iterator[Stack]:
    """A fresh database and Redis db, the API under gunicorn and `workers` worker processes."""
    home = Path(tempfile.mkdtemp(prefix="shiftscore-bench-"))
    database_url = create_pg_database()
    broker_url = claim_redis_db()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIFTSCORE_")}
    env.update({
        "SHIFTSCORE_HOME": str(home),
        "SHIFTSCORE_DATABASE_URL": database_url,
        "SHIFTSCORE_BROKER_URL": broker_url,
        "SHIFTSCORE_DEVICE": "cpu",
        "SHIFTSCORE_TORCH_THREADS": "1",
        "SHIFTSCORE_BATCH_SIZE": "256",
        **overrides,
    })
    stack = Stack(env=env, port=free_port(), log_dir=home)
    try:
        stack.migrate()
        stack.start_api()
        for _ in range(workers):
            stack.start_worker()
        yield stack
    finally:
        stack.stop()
        drop_pg_database(database_url)
        release_redis_db(broker_url)
        shutil.rmtree(home, ignore_errors=True)


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its live children (a worker and its pool)."""
    total = 0.0
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total
