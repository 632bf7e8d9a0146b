"""The worst-case gate: per sample, shifts in a fixed order until its first wrong prediction.

A pipeline that gates on worst_case_accuracy alone needs no more shifts of a
sample once one has failed it. The order is fixed (the unshifted view, then
the grid's shifts farthest from it first, ties in grid order), so the result
never depends on timing; worst_case_accuracy and clean_accuracy are exact,
and the per-shift counts are not measured at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import closing

import numpy as np
import torch

from worker.engine.driver import REFERENCE, ChunkViews, Shift, chunked_views
from worker.engine.plan import SweepError, SweepPlan
from worker.engine.sweep import Predict, check_logits
from worker.engine.tally import ClassCounts, Tally


def gate_order(plan: SweepPlan) -> list[Shift]:
    """The unshifted view first (every sample's clean prediction is needed), then the farthest shifts."""
    others = [shift for shift in plan.grid.shifts if shift != REFERENCE]
    # Far shifts fail most often, so a failing sample stops sooner; sorted() is stable.
    return [REFERENCE, *sorted(others, key=lambda s: -(s[0] * s[0] + s[1] * s[1]))]


def run_worst_case(
    predict: Predict,
    images: np.ndarray,
    labels: np.ndarray,
    indices: Sequence[int] | np.ndarray,
    plan: SweepPlan,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    tally: Tally | None = None,
    start: int = 0,
    on_progress: Callable[[int], None] | None = None,
    on_chunk: Callable[[Tally, int], None] | None = None,
) -> Tally:
    """Count clean and worst-case hits of `indices[start:]` into `tally` (the other counts stay zero)."""
    indices = np.asarray(indices, dtype=np.int64)
    device = torch.device(device)
    tally = tally or Tally(num_shifts=plan.grid.size)
    num_labels = int(labels[indices].max()) + 1 if len(indices) else 0
    order = gate_order(plan)
    chunk = max(1, min(batch_size, len(indices)))
    chunks = chunked_views(images, indices, plan, chunk=chunk, start=start, device=device, prefetch=False)
    with torch.inference_mode(), closing(chunks):
        for views in chunks:
            truth = torch.as_tensor(np.asarray(labels[views.rows], dtype=np.int64))
            clean_ok, worst_ok = _gate_chunk(predict, views, order, truth, batch_size, num_labels)
            _count(tally, truth.numpy(), clean_ok, worst_ok)
            if on_progress is not None:
                on_progress(views.stop * plan.grid.images_per_sample)
            if on_chunk is not None:
                on_chunk(tally, views.stop)
    return tally


def _gate_chunk(predict: Predict, views: ChunkViews, order: list[Shift], truth: torch.Tensor,
                batch_size: int, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Each sample's clean hit, and whether it survived every shift of `order`."""
    alive = torch.ones(len(truth), dtype=torch.bool)
    clean_ok = np.zeros(len(truth), dtype=bool)
    position = 0
    while position < len(order) and bool(alive.any()):
        rows = torch.nonzero(alive).flatten()
        group = order[position : position + max(1, batch_size // len(rows))]
        logits = predict(views.batch(group, rows.to(views.normalized.pixels.device)))
        check_logits(logits, len(rows) * len(group), num_labels)
        if not bool(torch.isfinite(logits).all()):
            raise SweepError("the model's output is not finite (NaN or infinity) for some inputs")
        right = (logits.argmax(dim=1).cpu().view(len(group), len(rows)) == truth[rows]).all(dim=0)
        if position == 0:
            clean_ok = (logits.argmax(dim=1).cpu()[: len(rows)] == truth).numpy()
        alive[rows[~right]] = False
        position += len(group)
    return clean_ok, alive.numpy()


def _count(tally: Tally, labels: np.ndarray, clean_ok: np.ndarray, worst_ok: np.ndarray) -> None:
    tally.n += len(labels)
    tally.clean_correct += int(clean_ok.sum())
    tally.worst_correct += int(worst_ok.sum())
    for label in np.unique(labels):
        mask = labels == label
        counts = tally.classes.setdefault(int(label), ClassCounts())
        counts.n += int(mask.sum())
        counts.clean_correct += int(clean_ok[mask].sum())
        counts.worst_correct += int(worst_ok[mask].sum())
