"""Inside the cage: a sweep chunk's runtime, checked against the model's own on the chunk's real images.

Validation checks a candidate runtime on seeded noise (worker/sandbox/backends.py);
two runtimes can agree there and still differ on real images. So before a chunk
runs on a runtime other than the model's own, both see the chunk's first
REAL_DATA_ROWS samples, unshifted and normalized by the engine's own code, and
the same agreement rule decides: agreed, the chunk runs on the chosen runtime;
not, on the model's own. The cost is one forward of those images on each runtime.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import closing
from typing import Any

import numpy as np
import torch

from core.runtimes import REAL_DATA_ROWS
from worker.engine.driver import REFERENCE, chunked_views
from worker.engine.plan import SweepPlan
from worker.sandbox import backends


def check_chunk(
    reference: Callable[[torch.Tensor], torch.Tensor], chosen: Callable[[torch.Tensor], torch.Tensor],
    images: np.ndarray, rows: np.ndarray, plan: SweepPlan, *, batch_size: int, device: torch.device,
    on_forward: Callable[[], None],
) -> dict[str, Any]:
    """The agreement of `chosen` with `reference` on the clean views of `rows[:REAL_DATA_ROWS]`.

    Forwarded `batch_size` samples at a time, as the sweep lays them, so the check needs
    no more memory than the sweep; `on_forward` runs after each forward (the cage's heartbeat).
    """
    first = np.asarray(rows[:REAL_DATA_ROWS], dtype=np.int64)
    chunk = max(1, min(batch_size, len(first)))
    parts = []
    views = chunked_views(images, first, plan, chunk=chunk, start=0, device=device, prefetch=False)
    with torch.inference_mode(), closing(views):
        for laid in views:
            batch = laid.batch([REFERENCE])
            expected = reference(batch)
            on_forward()
            try:
                got = chosen(batch)
            except Exception:  # noqa: BLE001 — a runtime that fails on real images is a disagreement
                got = torch.full_like(expected, math.nan)
            parts.append(backends.compared(expected, got))
            on_forward()
    checked = backends.judged(parts)
    return {
        "rows": checked["rows"], "argmax_equal": checked["argmax_equal"],
        # NaN or infinity has no JSON: such a difference is reported as unknown (and never agrees).
        "max_abs_diff": _finite(checked["max_abs_diff"]), "tolerance": _finite(checked["tolerance"]),
        "agrees": checked["agrees"],
    }


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
