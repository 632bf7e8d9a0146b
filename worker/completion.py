"""A chunk's end: store its checked tally; the last chunk to finish merges them all and records the result.

A chunk's stored tally is a JSON object: a classification Tally or a SegmentationTally,
with a layer profile riding along under "layers" and, on a runtime other than the
model's own, the chunk's real-data check under "real_data_check". The sandbox computes them
(worker.sandbox.runner); here they are only merged, by one fold whatever the task,
and recorded by the task's finisher.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

from sqlalchemy.orm import Session

from core.grid import Grid
from core.runtimes import REAL_DATA_CHECK, real_data_record
from db import jobs
from db.profiles import record_layer_profile, record_segmentation_shifts
from db.session import session_scope
from worker.engine.layers import LAYERS, LayerTally, profile_rows
from worker.engine.metrics import class_rows, shift_rows, summary, worst_case_summary
from worker.engine.segmentation import SegmentationTally, segmentation_rows, segmentation_summary
from worker.engine.tally import Tally


class Mergeable(Protocol):
    def merge(self, other: Any) -> None: ...


M = TypeVar("M", bound=Mergeable)


def merge_all(from_json: Callable[[dict[str, Any]], M], parts: Iterable[dict[str, Any]]) -> M:
    """One tally from the chunks' tallies (integer counts: the order cannot change the sum)."""
    tallies = iter(parts)
    merged = from_json(next(tallies))
    for data in tallies:
        merged.merge(from_json(data))
    return merged


def _finish_classification(session: Session, evaluation_id: str, tallies: list[dict[str, Any]], grid: Grid) -> bool:
    merged = merge_all(Tally.from_json, tallies)
    return jobs.finish_evaluation(session, evaluation_id, summary(merged, grid), shift_rows(merged, grid),
                                  class_rows(merged, grid), merged.examples)


def _finish_worst_case(session: Session, evaluation_id: str, tallies: list[dict[str, Any]], grid: Grid) -> bool:
    # An early-exit gate measured no per-shift, per-class or example figures: no rows for them.
    merged = merge_all(Tally.from_json, tallies)
    return jobs.finish_evaluation(session, evaluation_id, worst_case_summary(merged, grid), [], [], [])


def _finish_segmentation(session: Session, evaluation_id: str, tallies: list[dict[str, Any]], grid: Grid) -> bool:
    merged = merge_all(SegmentationTally.from_json, tallies)
    rows = segmentation_rows(merged, grid.shifts)
    if not jobs.finish_evaluation(session, evaluation_id, segmentation_summary(merged, rows), [], [], []):
        return False
    record_segmentation_shifts(session, evaluation_id, rows)
    return True


# Sweep kind (worker.engine.plan.sweep_kind) -> how the merged tallies become the evaluation's results;
# True when this call finished it. worker.sandbox.runner.ENGINES has the same keys.
FINISHERS: dict[str, Callable[[Session, str, list[dict[str, Any]], Grid], bool]] = {
    "classification": _finish_classification,
    "worst_case": _finish_worst_case,
    "segmentation": _finish_segmentation,
}


def record_layers(session: Session, evaluation_id: str, tallies: list[dict[str, Any]], grid: Grid) -> None:
    """Merge the chunks' layer profiles, if any, and store the result."""
    parts = [t[LAYERS] for t in tallies if t.get(LAYERS)]
    if parts:
        record_layer_profile(session, evaluation_id, profile_rows(merge_all(LayerTally.from_json, parts), grid.shifts))


def record_real_data_check(session: Session, evaluation_id: str, tallies: list[dict[str, Any]]) -> None:
    """Add the chunks' real-data checks, if any ran, to the evaluation's runtime record.

    One stored tally per chunk, a retry's replacing its earlier attempt's, and this runs once,
    when the evaluation finishes: nothing is counted twice.
    """
    parts = [t[REAL_DATA_CHECK] for t in tallies if t.get(REAL_DATA_CHECK)]
    if parts:
        jobs.extend_runtime(session, evaluation_id, real_data_record(parts))


def complete_chunk(
    task: str, claimed: jobs.ClaimedChunk, chunk_tally: dict[str, Any], high_water: int, grid: Grid
) -> None:
    """Store a chunk's checked tally; the last chunk to finish records the result.

    Safe to repeat: a chunk already done answers LostClaim, and the evaluation finishes in the same commit.
    """
    with session_scope() as session:
        tallies = jobs.complete_chunk(session, claimed.claim, chunk_tally, high_water, claimed.total, claimed.stop)
        if tallies is None:
            return
        evaluation_id = claimed.claim.evaluation_id
        if FINISHERS[task](session, evaluation_id, tallies, grid):
            record_layers(session, evaluation_id, tallies, grid)
            record_real_data_check(session, evaluation_id, tallies)
