"""The periodic loop of `shiftscore scheduler`: runs each PERIODIC task in this process.

The tasks run here rather than through the queue: a worker busy with an hour-long
sweep must not delay the reconciler or a webhook. One scheduler per deployment.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def run_periodic(tasks: dict[str, tuple[Callable[[], object], float]], stop: threading.Event) -> None:
    """Call each task every `seconds` until `stop` is set; a failing task is logged, not fatal."""
    due = {name: 0.0 for name in tasks}
    while not stop.is_set():
        now = time.monotonic()
        for name, (task, seconds) in tasks.items():
            if now >= due[name]:
                try:
                    task()
                except Exception:  # noqa: BLE001 — the next tick tries again
                    log.exception("periodic task %s failed", name)
                due[name] = time.monotonic() + seconds
        stop.wait(max(0.05, min(due.values()) - time.monotonic()) if due else 1.0)
