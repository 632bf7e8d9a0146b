"""The sweep: every sample under every shift of the grid, through the model, into a Tally.

Plain torch and numpy: no web, no queue, no database. Samples stream through in
chunks, so memory follows the batch size, never N×S.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from worker.engine.grid import Grid
from worker.engine.shifting import canvas_margin, make_canvas, normalize, to_float
from worker.engine.tally import Tally

Predict = Callable[[torch.Tensor], torch.Tensor]


class SweepError(Exception):
    """The model cannot be swept as asked; the message is for the user."""


@dataclass(frozen=True)
class SweepPlan:
    """What to sweep: the grid, how to fill, how to normalize, and the model's input size."""

    grid: Grid
    padding: str
    fill: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_hw: tuple[int, int]

    @property
    def evaluated_shifts(self) -> list[tuple[float, float]]:
        """The grid's shifts, then the reference (0, 0) when the grid lacks it."""
        shifts = list(self.grid.shifts)
        if (0.0, 0.0) not in self.grid.shifts:
            shifts.append((0.0, 0.0))
        return shifts

    def images_per_sample(self) -> int:
        return len(self.evaluated_shifts)


def sample_indices(num_samples: int, max_samples: int | None, seed: int) -> np.ndarray:
    """All samples, or SPEC §1's seeded subset sorted(default_rng(seed).permutation(N)[:m])."""
    if max_samples is None or max_samples >= num_samples:
        return np.arange(num_samples)
    return np.sort(np.random.default_rng(seed).permutation(num_samples)[:max_samples])


def _predictions(logits: torch.Tensor, num_labels: int) -> torch.Tensor:
    if logits.ndim != 2:
        raise SweepError(
            f"the model returned an output of shape {tuple(logits.shape)}; "
            "a classifier must return N×K logits"
        )
    if logits.shape[1] < num_labels:
        raise SweepError(
            f"the model returns {logits.shape[1]} logits but the dataset has labels up to "
            f"{num_labels - 1}"
        )
    if not torch.isfinite(logits).all():
        raise SweepError("the model's output is not finite (NaN or infinity) for some inputs")
    return logits.argmax(dim=1)


def run_sweep(
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
    """Sweep `indices[start:]` into `tally` and return it.

    `on_progress(images_done)` runs after every forward batch and may raise to stop
    the sweep; `on_chunk(tally, next_start)` runs after every chunk of samples, so
    a caller can checkpoint and later resume with `tally` and `start`.
    """
    device = torch.device(device)
    indices = np.asarray(indices, dtype=np.int64)
    grid = plan.grid
    shifts = plan.evaluated_shifts
    reference = shifts.index((0.0, 0.0))
    num_labels = int(labels[indices].max()) + 1 if len(indices) else 0
    pairs = np.asarray(grid.neighbour_pairs(), dtype=np.int64).reshape(-1, 2)
    tally = tally or Tally(num_shifts=grid.size)
    channels = images.shape[3] if images.ndim == 4 else 1
    mean = torch.tensor(_per_channel(plan.mean, channels), dtype=torch.float32, device=device)
    std = torch.tensor(_per_channel(plan.std, channels), dtype=torch.float32, device=device)
    mean, std = mean.view(-1, 1, 1), std.view(-1, 1, 1)
    margin = canvas_margin(grid.max_abs)
    chunk = max(1, min(batch_size, len(indices)))
    shifts_per_batch = max(1, batch_size // chunk)
    done = start * len(shifts)
    with torch.inference_mode():
        for begin in range(start, len(indices), chunk):
            rows = indices[begin : begin + chunk]
            canvas = make_canvas(
                to_float(images[rows], device), plan.padding, plan.fill, margin, plan.input_hw
            )
            predicted = torch.empty((len(rows), len(shifts)), dtype=torch.int64)
            for first in range(0, len(shifts), shifts_per_batch):
                group = shifts[first : first + shifts_per_batch]
                batch = torch.cat([canvas.view(dx, dy) for dx, dy in group])
                out = _predictions(predict(normalize(batch, mean, std)), num_labels)
                predicted[:, first : first + len(group)] = out.view(len(group), len(rows)).T.cpu()
                done += len(rows) * len(group)
                if on_progress is not None:
                    on_progress(done)
            all_predictions = predicted.numpy()
            grid_predictions = (
                all_predictions if reference < grid.size else all_predictions[:, : grid.size]
            )
            tally.add(
                grid,
                grid_predictions,
                all_predictions[:, reference],
                np.asarray(labels[rows]),
                rows,
                pairs,
            )
            if on_chunk is not None:
                on_chunk(tally, begin + len(rows))
    return tally


def _per_channel(values: Sequence[float], channels: int) -> list[float]:
    values = list(values)
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise SweepError(f"mean/std give {len(values)} values for {channels} channels")
    return values
