"""The real service for the benchmarks: gunicorn API + Celery worker on PostgreSQL and Redis."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from tests.stack import Stack, running_stack


@contextmanager
def real_stack(workers: int = 1, concurrency: int | None = 1, **overrides: str) -> Iterator[Stack]:
    """A fresh database and Redis db, the API under gunicorn and `workers` workers of `concurrency`
    processes (None: the product's default)."""
    home = Path(tempfile.mkdtemp(prefix="shiftscore-bench-"))
    settings = {"SHIFTSCORE_DEVICE": "cpu", "SHIFTSCORE_TORCH_THREADS": "1", "SHIFTSCORE_BATCH_SIZE": "256",
                "SHIFTSCORE_PROGRESS_INTERVAL": "0.5", **overrides}
    # An empty override leaves that setting at the product's default.
    settings = {name: value for name, value in settings.items() if value != ""}
    try:
        with running_stack(home, workers=workers, concurrency=concurrency, scheduler=False, **settings) as stack:
            yield stack
    finally:
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
