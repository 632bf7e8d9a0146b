"""What a sweep is asked to do: the plan, the samples it runs over, and the error it gives the user.

Torch-free, so anything that only describes a sweep can import it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.grid import Grid


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


def sample_indices(num_samples: int, max_samples: int | None, seed: int) -> np.ndarray:
    """All samples, or SPEC §1's seeded subset sorted(default_rng(seed).permutation(N)[:m])."""
    if max_samples is None or max_samples >= num_samples:
        return np.arange(num_samples)
    return np.sort(np.random.default_rng(seed).permutation(num_samples)[:max_samples])
