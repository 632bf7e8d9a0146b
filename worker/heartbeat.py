"""A side thread that beats a lease's heartbeat while long work runs (a chunk, a validation, an ingestion)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Heartbeat:
    """Calls `beat` from a side thread every `every` seconds until it returns False or the block ends.

    A long forward batch must never make a live worker look dead.
    """

    def __init__(self, beat: Callable[[], bool], every: float) -> None:
        self.beat, self.every = beat, every
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        while not self.stopped.wait(self.every):
            try:
                if not self.beat():
                    return
            except Exception:  # noqa: BLE001 — a missed beat is retried; the work goes on
                log.warning("heartbeat failed", exc_info=True)
