"""What makes two evaluations the same sweep, so that their numbers compare (the leaderboard ranks within one)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from core.grid import Grid

# Besides the dataset, a sweep is these fields of the request; the grid counts as swept, so a
# range and the list of the same shifts are one sweep.
SWEEP_FIELDS = ("shifts", "padding", "fill", "max_samples", "seed")
# The other axes of the grid. They enter the key through the grid (every transform, in order);
# the leaderboard shows them only when a sweep names them, so a translation sweep reads as it did.
TRANSFORM_FIELDS = ("angle", "scale", "brightness")


def digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def sweep_key(dataset_id: str, grid: Grid, request: dict[str, Any]) -> str:
    """The sweep's identity as a hex digest: the dataset, the grid (every axis) and the rest of SWEEP_FIELDS."""
    rest = {name: request.get(name) for name in SWEEP_FIELDS if name != "shifts"}
    # A worst-case gate measures fewer metrics: never ranked beside full sweeps. Named only when
    # set, so a full sweep keeps the key it had before gates existed.
    gate = {"early_exit": True} if request.get("early_exit") else {}
    return digest({"dataset_id": dataset_id, "grid": grid.to_json(), **rest, **gate})
