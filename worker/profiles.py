"""Dense outputs and layer profiles in the chunked evaluation: merged and recorded by the last chunk.

A chunk's stored tally is a JSON object; a segmentation chunk stores a
SegmentationTally there, and a layer profile rides along under "layers". The
sandbox computes them (worker.sandbox.runner); this module only merges.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from core.grid import Grid
from db import jobs
from db.profiles import record_layer_profile, record_segmentation_shifts
from db.session import session_scope
from worker.engine.layers import LayerTally, profile_rows
from worker.engine.segmentation import SegmentationTally, segmentation_rows, segmentation_summary

LAYERS = "layers"


def record_layers(session: Session, evaluation_id: str, tallies: list[dict[str, Any]], grid: Grid) -> None:
    """Merge the chunks' layer profiles, if any, and store the result."""
    parts = [LayerTally.from_json(t[LAYERS]) for t in tallies if t.get(LAYERS)]
    if not parts:
        return
    merged = parts[0]
    for part in parts[1:]:
        merged.merge(part)
    record_layer_profile(session, evaluation_id, profile_rows(merged, grid.shifts))


def complete_segmentation_chunk(
    claimed: jobs.ClaimedChunk, chunk_tally: dict[str, Any], high_water: int, grid: Grid
) -> None:
    """Store a segmentation chunk's checked tally; the last chunk to finish records the result."""
    with session_scope() as session:
        tallies = jobs.complete_chunk(session, claimed.claim, chunk_tally, high_water, claimed.total, claimed.stop)
        if tallies is None:
            return
        merged = SegmentationTally.from_json(tallies[0])
        for data in tallies[1:]:
            merged.merge(SegmentationTally.from_json(data))
        shift_rows = segmentation_rows(merged, grid.shifts)
        evaluation_id = claimed.claim.evaluation_id
        if jobs.finish_evaluation(session, evaluation_id, segmentation_summary(merged, shift_rows), [], [], []):
            record_segmentation_shifts(session, evaluation_id, shift_rows)
            record_layers(session, evaluation_id, tallies, grid)
