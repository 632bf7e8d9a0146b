"""SPEC §3 in the chunked evaluation: a chunk's segmentation sweep or layer profile, merged by the last chunk.

A chunk's stored tally is a JSON object; a segmentation chunk stores a
SegmentationTally there, and a layer profile rides along under "layers".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sqlalchemy.orm import Session

from db import jobs
from db.profiles import record_layer_profile, record_segmentation_shifts
from db.session import session_scope
from worker.engine.grid import Grid
from worker.engine.layers import LayerTally, profile_rows, run_layer_profile
from worker.engine.segmentation import (
    SegmentationTally,
    run_segmentation_sweep,
    segmentation_rows,
    segmentation_summary,
)
from worker.engine.sweep import SweepPlan

LAYERS = "layers"


def with_layer_profile(
    chunk_tally: dict[str, Any],
    request: dict[str, Any],
    model: Any,
    images: np.ndarray,
    rows: np.ndarray,
    plan: SweepPlan,
    batch_size: int,
    device: torch.device,
) -> dict[str, Any]:
    """The chunk's tally, with the layer profile of its samples when the request asks for one."""
    asked = request.get(LAYERS)
    if not asked:
        return chunk_tally
    names = None if asked is True else list(asked)
    profile = run_layer_profile(model, images, rows, plan, names, batch_size=batch_size, device=device)
    return {**chunk_tally, LAYERS: profile.to_json()}


def record_layers(session: Session, evaluation_id: str, tallies: list[dict[str, Any]], grid: Grid) -> None:
    """Merge the chunks' layer profiles, if any, and store the result."""
    parts = [LayerTally.from_json(t[LAYERS]) for t in tallies if t.get(LAYERS)]
    if not parts:
        return
    merged = parts[0]
    for part in parts[1:]:
        merged.merge(part)
    record_layer_profile(session, evaluation_id, profile_rows(merged, grid.shifts))


def sweep_segmentation_chunk(
    claimed: jobs.ClaimedChunk,
    request: dict[str, Any],
    model: Any,
    images: np.ndarray,
    masks: np.ndarray,
    indices: np.ndarray,
    plan: SweepPlan,
    batch_size: int,
    device: torch.device,
    progress: tuple[Callable[[int], None], Callable[[Any, int], None], Callable[[], int]],
) -> None:
    """Sweep one chunk of a segmentation evaluation; the last chunk to finish records the result.

    `progress` is (on_progress, on_chunk, high_water) of the caller's progress reporter.
    """
    on_progress, on_chunk, high_water = progress
    rows = indices[claimed.start : claimed.stop]
    tally = SegmentationTally.from_json(claimed.tally) if claimed.tally else None
    tally = run_segmentation_sweep(
        model, images, masks, rows, plan, batch_size=batch_size, device=device, tally=tally,
        start=claimed.position - claimed.start, on_progress=on_progress, on_chunk=on_chunk,
    )
    chunk_tally = with_layer_profile(tally.to_json(), request, model, images, rows, plan, batch_size, device)
    with session_scope() as session:
        tallies = jobs.complete_chunk(session, claimed.claim, chunk_tally, high_water(), claimed.total, claimed.stop)
        if tallies is None:
            return
        merged = SegmentationTally.from_json(tallies[0])
        for data in tallies[1:]:
            merged.merge(SegmentationTally.from_json(data))
        shift_rows = segmentation_rows(merged, plan.grid.shifts)
        evaluation_id = claimed.claim.evaluation_id
        if jobs.finish_evaluation(session, evaluation_id, segmentation_summary(merged, shift_rows), [], [], []):
            record_segmentation_shifts(session, evaluation_id, shift_rows)
            record_layers(session, evaluation_id, tallies, plan.grid)
