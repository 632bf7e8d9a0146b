"""The periodic loop of `shiftscore scheduler`: runs each periodic task in this process.

The tasks run here rather than through the queue: a worker busy with an hour-long
sweep must not delay the reconciler or a webhook. One scheduler per deployment.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def periodic_tasks() -> dict[str, tuple[Callable[[], object], float]]:
    """Name -> (the domain call, seconds between runs). Called here, never sent through the queue.

    The reconciler's pass is a few indexed queries; how soon it acts is SHIFTSCORE_STALE_AFTER.
    """
    from worker.reconciler import reconcile
    from worker.webhooks import enqueue_due_webhooks

    return {"shiftscore.enqueue_webhooks": (enqueue_due_webhooks, 1.0), "shiftscore.reconcile": (reconcile, 2.0)}


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
