"""What a sweep is asked to do: the plan, the samples it runs over, and the error it gives the user.

Torch-free, so anything that only describes a sweep can import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.grid import Grid
from core.sweep import samples_swept


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
    count = samples_swept(num_samples, max_samples)
    if count == num_samples:
        return np.arange(num_samples)
    return np.sort(np.random.default_rng(seed).permutation(num_samples)[:count])


def sweep_kind(task: str, request: Mapping[str, Any]) -> str:
    """Which engine sweeps a chunk and which finisher records it: the model's task, or "worst_case"
    for a classification behind the early-exit gate (it measures fewer figures)."""
    return "worst_case" if task == "classification" and request.get("early_exit") else task
