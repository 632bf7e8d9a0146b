"""The metrics of SPEC §2, computed from a finished Tally."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.grid import IDENTITY_VALUES, Grid
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


def shift_rows(tally: Tally, grid: Grid) -> list[dict[str, Any]]:
    """One row per transform, in grid order; angle, scale and brightness when the grid has other axes."""
    rows = []
    for i, (dx, dy, angle, scale, brightness) in enumerate(grid.transforms):
        correct, agree = int(tally.shift_correct[i]), int(tally.shift_agree[i])
        row = {
            "dx": dx,
            "dy": dy,
            "n": tally.n,
            "correct": correct,
            "agreed": agree,
            "accuracy": correct / tally.n,
            "agreement": agree / tally.n,
        }
        if grid.axes:
            row.update(angle=angle, scale=scale, brightness=brightness)
        rows.append(row)
    return rows


def marginal_rows(rows: list[dict[str, Any]], axes: Sequence[str]) -> list[dict[str, Any]]:
    """Per named axis and each of its values: accuracy and agreement over the image-transform pairs.

    `rows` are shift rows (with `correct`, `agreed`, `n`); a value's `n` is N times the transforms
    that have it. Axes in the order given, values ascending.
    """
    out = []
    for axis in axes:
        sums: dict[float, list[int]] = {}
        for row in rows:
            counts = sums.setdefault(float(row.get(axis, IDENTITY_VALUES[axis])), [0, 0, 0])
            counts[0] += row["correct"]
            counts[1] += row["agreed"]
            counts[2] += row["n"]
        for value in sorted(sums):
            correct, agreed, n = sums[value]
            out.append({"axis": axis, "value": value, "accuracy": correct / n, "agreement": agreed / n, "n": n})
    return out


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
