"""The classification sweep: every sample under every shift of the grid, through the model, into a Tally."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from worker.engine.driver import ChunkViews, Shift, drive
from core.grid import IDENTITY
from worker.engine.plan import SweepError, SweepPlan
from worker.engine.tally import Tally

Predict = Callable[[torch.Tensor], torch.Tensor]


def check_logits(logits: torch.Tensor, batch_rows: int, num_labels: int) -> None:
    """Shape checks only: they read no values, so a GPU can keep running ahead."""
    if logits.ndim != 2:
        raise SweepError(
            f"the model returned an output of shape {tuple(logits.shape)}; "
            "a classifier must return N×K logits"
        )
    if logits.shape[0] != batch_rows:
        raise SweepError(
            f"the model returned {logits.shape[0]} rows of logits for a batch of {batch_rows} "
            "images; it must return one row per image"
        )
    if logits.shape[1] < num_labels:
        raise SweepError(
            f"the model returns {logits.shape[1]} logits but the dataset has labels up to "
            f"{num_labels - 1}"
        )


def _true_log_probability(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[label] per row, in float64 so that near-equal confidences still order."""
    wide = logits.to(device=labels.device, dtype=torch.float64)
    return wide.gather(1, labels[:, None]).squeeze(1) - torch.logsumexp(wide, dim=1)


class Predictions:
    """A classification sweep's accumulator: each chunk's predictions, then its counts in a Tally.

    Predictions stay on the device until the chunk ends: one sync per chunk, not per batch.
    """

    def __init__(self, plan: SweepPlan, labels: np.ndarray, indices: np.ndarray, tally: Tally | None) -> None:
        self.grid = plan.grid
        self.shifts = plan.grid.evaluated_transforms
        self.reference = self.shifts.index(IDENTITY)
        self.labels = labels
        self.num_labels = int(labels[indices].max()) + 1 if len(indices) else 0
        self.pairs = np.asarray(self.grid.neighbour_pairs(), dtype=np.int64).reshape(-1, 2)
        self.tally = tally or Tally(num_shifts=self.grid.size)

    def begin(self, views: ChunkViews) -> None:
        device = views.normalized.pixels.device
        self.predicted = torch.empty((len(self.shifts), len(views.rows)), dtype=torch.int64, device=device)
        self.true_logprob = torch.empty((len(self.shifts), len(views.rows)), dtype=torch.float64, device=device)
        self.chunk_labels = torch.as_tensor(np.asarray(self.labels[views.rows], dtype=np.int64), device=device)
        self.filled = 0
        self.finite: list[torch.Tensor] = []

    def add(self, views: ChunkViews, shifts: Sequence[Shift], logits: torch.Tensor) -> None:
        rows = len(views.rows)
        check_logits(logits, rows * len(shifts), self.num_labels)
        self.finite.append(torch.isfinite(logits).all())
        # argmax takes the first of tied maxima, on CPU and CUDA alike (SPEC §1).
        self.predicted[self.filled : self.filled + len(shifts)] = (
            logits.argmax(dim=1).to(self.predicted.device).view(len(shifts), rows)
        )
        self.true_logprob[self.filled : self.filled + len(shifts)] = (
            _true_log_probability(logits, self.chunk_labels.repeat(len(shifts))).view(len(shifts), rows)
        )
        self.filled += len(shifts)

    def end(self, views: ChunkViews) -> None:
        # One sync for the whole chunk: the flags stay on the device until here.
        if not bool(torch.stack(self.finite).all()):
            raise SweepError("the model's output is not finite (NaN or infinity) for some inputs")
        size = self.grid.size
        all_predictions = np.ascontiguousarray(self.predicted.cpu().numpy().T)
        grid_predictions = all_predictions if self.reference < size else all_predictions[:, :size]
        rows = views.rows
        clean = all_predictions[:, self.reference]
        true_logprob = np.ascontiguousarray(self.true_logprob[: self.grid.size].cpu().numpy().T)
        self.tally.add(self.grid, grid_predictions, clean, np.asarray(self.labels[rows]), rows, self.pairs,
                       true_logprob)


def run_sweep(
    predict: Predict,
    images: np.ndarray,
    labels: np.ndarray,
    indices: Sequence[int] | np.ndarray,
    plan: SweepPlan,
    *,
    tally: Tally | None = None,
    **options: Any,
) -> Tally:
    """Sweep `indices[start:]` into `tally` and return it; `options` as in worker.engine.driver.drive."""
    indices = np.asarray(indices, dtype=np.int64)
    return drive(predict, Predictions(plan, labels, indices, tally), images, indices, plan, reference_alone=False,
                 **options)
