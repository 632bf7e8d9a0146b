"""Write SPEC §3's results: layer profiles and per-shift segmentation rows."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete
from sqlalchemy.orm import Session

from db.models import LayerResult, SegmentationResult


def record_layer_profile(session: Session, evaluation_id: str, layers: list[dict[str, Any]]) -> None:
    """Replace the evaluation's layer profile with `layers` (rows of worker.engine.layers.profile_rows)."""
    session.execute(delete(LayerResult).where(LayerResult.evaluation_id == evaluation_id))
    session.add_all(
        LayerResult(
            evaluation_id=evaluation_id, layer_position=i, shift_position=j, layer=layer["name"],
            kind=layer["kind"], shape=layer["shape"], factor=layer["factor"], dx=s["dx"], dy=s["dy"],
            equivariance_error=s["equivariance_error"], invariance_error=s["invariance_error"],
        )
        for i, layer in enumerate(layers)
        for j, s in enumerate(layer["shifts"])
    )


def record_segmentation_shifts(session: Session, evaluation_id: str, rows: list[dict[str, Any]]) -> None:
    """Replace the evaluation's per-shift segmentation rows."""
    session.execute(delete(SegmentationResult).where(SegmentationResult.evaluation_id == evaluation_id))
    session.add_all(
        SegmentationResult(
            evaluation_id=evaluation_id, position=i, dx=r["dx"], dy=r["dy"], n=r["n"], pixels=r["pixels"],
            correct=r["correct"], cells=r["cells"], agreed=r["agreed"],
            equivariance_error=r["equivariance_error"], miou=r["miou"],
        )
        for i, r in enumerate(rows)
    )
