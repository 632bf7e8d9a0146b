"""The metrics of SPEC §2, computed from a finished Tally."""

from __future__ import annotations

from typing import Any

from core.grid import Grid
from worker.engine.tally import Tally


def summary(tally: Tally, grid: Grid) -> dict[str, Any]:
    """clean/mean/worst-case accuracy, consistency and flip rate over the grid."""
    n, shifts = tally.n, grid.size
    if n == 0:
        raise ValueError("no samples were evaluated")
    return {
        "clean_accuracy": tally.clean_correct / n,
        "mean_accuracy": int(tally.shift_correct.sum()) / (shifts * n),
        "worst_case_accuracy": tally.worst_correct / n,
        "consistency": tally.consistency_squares / (shifts * shifts * n),
        "flip_rate": tally.flip_changes / tally.flip_pairs if tally.flip_pairs else None,
        "num_samples": n,
        "num_shifts": shifts,
    }


EARLY_EXIT_NOTE = (
    "early_exit: each sample stopped at its first wrong shift, so only clean_accuracy and "
    "worst_case_accuracy (both exact) were measured; the per-shift metrics are null"
)


def worst_case_summary(tally: Tally, grid: Grid) -> dict[str, Any]:
    """The summary of an early_exit sweep: the worst case and the clean accuracy, the rest null."""
    full = summary(tally, grid)
    nulls = dict.fromkeys(("mean_accuracy", "consistency", "flip_rate"))
    return {**full, **nulls, "note": EARLY_EXIT_NOTE}


def shift_rows(tally: Tally, grid: Grid) -> list[dict[str, Any]]:
    """One row per transform, in grid order; angle, scale and brightness when the grid has other axes."""
    rows = []
    for i, transform in enumerate(grid.transforms):
        correct, agree = int(tally.shift_correct[i]), int(tally.shift_agree[i])
        rows.append({
            **grid.named(transform),
            "n": tally.n,
            "correct": correct,
            "agreed": agree,
            "accuracy": correct / tally.n,
            "agreement": agree / tally.n,
        })
    return rows


def class_rows(tally: Tally, grid: Grid) -> list[dict[str, Any]]:
    """Per true label: n, clean, mean and worst-case accuracy."""
    rows = []
    for label in sorted(tally.classes):
        counts = tally.classes[label]
        rows.append({
            "label": label,
            "n": counts.n,
            "clean_accuracy": counts.clean_correct / counts.n,
            "mean_accuracy": counts.shift_correct / (grid.size * counts.n),
            "worst_case_accuracy": counts.worst_correct / counts.n,
        })
    return rows
