"""Per-axis marginals of a sweep's per-transform rows: plain arithmetic the API serves and the engine's tests check."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.grid import IDENTITY_VALUES


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
