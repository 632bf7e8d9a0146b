"""State changes of an evaluation job, each a conditional update so racing workers cannot collide.

A worker holds an evaluation through its attempt number: every write it makes
is guarded by `attempts = <its attempt>`, so a worker that lost its claim (the
sweep was cancelled, or taken over after it went silent) can no longer write.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, or_, update
from sqlalchemy.orm import Session

from db.models import ClassResult, Evaluation, ExampleResult, Model, ShiftResult, utcnow

TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class Claim:
    """A worker's hold on an evaluation."""

    evaluation_id: str
    attempt: int


class LostClaim(Exception):
    """The evaluation was cancelled or taken over: stop working on it."""


def claim_evaluation(
    session: Session, evaluation_id: str, worker: str, stale_after: timedelta, max_attempts: int
) -> Claim | None:
    """Move a queued evaluation (or a running one whose worker went silent) to running."""
    evaluation = session.get(Evaluation, evaluation_id)
    if evaluation is None or evaluation.status in TERMINAL:
        return None
    if evaluation.attempts >= max_attempts:
        fail_evaluation(
            session,
            evaluation_id,
            None,
            "attempts_exhausted",
            f"the sweep was started {evaluation.attempts} times and never finished "
            "(its worker died each time); giving up",
        )
        return None
    now = utcnow()
    attempt = evaluation.attempts + 1
    result = session.execute(
        update(Evaluation)
        .where(
            Evaluation.id == evaluation_id,
            Evaluation.attempts == evaluation.attempts,
            Evaluation.cancel_requested.is_(False),
            or_(
                Evaluation.status == "queued",
                and_(Evaluation.status == "running", Evaluation.heartbeat_at < now - stale_after),
            ),
        )
        .values(
            status="running",
            attempts=attempt,
            worker=worker,
            started_at=evaluation.started_at or now,
            heartbeat_at=now,
        )
    )
    if result.rowcount != 1:
        return None
    return Claim(evaluation_id, attempt)


def _held(claim: Claim) -> list[Any]:
    return [
        Evaluation.id == claim.evaluation_id,
        Evaluation.attempts == claim.attempt,
        Evaluation.status == "running",
    ]


def record_progress(
    session: Session, claim: Claim, done: int, total: int, checkpoint: dict[str, Any] | None = None
) -> None:
    """Write progress (and a checkpoint); raise LostClaim if the sweep should stop."""
    values: dict[str, Any] = {"progress_done": done, "progress_total": total, "heartbeat_at": utcnow()}
    if checkpoint is not None:
        values["checkpoint"] = checkpoint
    result = session.execute(
        update(Evaluation).where(*_held(claim), Evaluation.cancel_requested.is_(False)).values(**values)
    )
    if result.rowcount != 1:
        session.rollback()
        if not _cancel_if_requested(session, claim):
            raise LostClaim("the evaluation is no longer held by this worker")
        raise LostClaim("the evaluation was cancelled")


def _cancel_if_requested(session: Session, claim: Claim) -> bool:
    result = session.execute(
        update(Evaluation)
        .where(*_held(claim), Evaluation.cancel_requested.is_(True))
        .values(status="cancelled", finished_at=utcnow(), checkpoint=None)
    )
    session.commit()
    return result.rowcount == 1


def finish_evaluation(
    session: Session,
    claim: Claim,
    summary: dict[str, Any],
    shifts: list[dict[str, Any]],
    classes: list[dict[str, Any]],
    examples: list[dict[str, Any]],
) -> bool:
    """Record the results and mark the evaluation succeeded, once; False if the claim was lost."""
    result = session.execute(
        update(Evaluation)
        .where(*_held(claim))
        .values(
            status="succeeded",
            summary=summary,
            finished_at=utcnow(),
            progress_done=Evaluation.progress_total,
            checkpoint=None,
            error_type=None,
            error_detail=None,
        )
    )
    if result.rowcount != 1:
        session.rollback()
        return False
    evaluation_id = claim.evaluation_id
    for table in (ShiftResult, ClassResult, ExampleResult):
        session.execute(delete(table).where(table.evaluation_id == evaluation_id))
    session.add_all(
        ShiftResult(evaluation_id=evaluation_id, position=i, dx=r["dx"], dy=r["dy"], n=r["n"],
                    correct=r["correct"], agreed=r["agreed"])
        for i, r in enumerate(shifts)
    )
    session.add_all(ClassResult(evaluation_id=evaluation_id, **row) for row in classes)
    session.add_all(
        ExampleResult(
            evaluation_id=evaluation_id,
            rank=rank,
            sample_index=e["index"],
            label=e["label"],
            clean_prediction=e["clean_prediction"],
            worst_prediction=e["worst_prediction"],
            worst_dx=e["worst_shift"][0],
            worst_dy=e["worst_shift"][1],
            flips=e["flips"],
        )
        for rank, e in enumerate(examples)
    )
    return True


def fail_evaluation(
    session: Session, evaluation_id: str, claim: Claim | None, error_type: str, detail: str
) -> bool:
    """Mark the evaluation failed with a message for the user (guarded by the claim if given)."""
    conditions = _held(claim) if claim else [
        Evaluation.id == evaluation_id, Evaluation.status.in_(("queued", "running"))
    ]
    result = session.execute(
        update(Evaluation)
        .where(*conditions)
        .values(status="failed", error_type=error_type, error_detail=detail, finished_at=utcnow(),
                checkpoint=None)
    )
    return result.rowcount == 1


def request_cancel(session: Session, evaluation: Evaluation) -> None:
    """Cancel a queued evaluation at once; ask a running one's worker to stop."""
    if evaluation.status == "queued":
        session.execute(
            update(Evaluation)
            .where(Evaluation.id == evaluation.id, Evaluation.status == "queued")
            .values(status="cancelled", cancel_requested=True, finished_at=utcnow())
        )
    elif evaluation.status == "running":
        session.execute(
            update(Evaluation).where(Evaluation.id == evaluation.id).values(cancel_requested=True)
        )
    session.refresh(evaluation)


def record_model_validation(
    session: Session, model_id: str, *, error: str | None, num_parameters: int | None,
    num_outputs: int | None,
) -> None:
    """Mark an uploaded model ready, or invalid with the reason."""
    session.execute(
        update(Model)
        .where(Model.id == model_id, Model.status == "validating")
        .values(
            status="invalid" if error else "ready",
            error=error,
            num_parameters=num_parameters,
            num_outputs=num_outputs,
        )
    )


def stale_evaluations(session: Session, cutoff: datetime) -> list[str]:
    """Ids of evaluations queued or running with no sign of life since `cutoff`."""
    rows = session.execute(
        Evaluation.__table__.select()
        .with_only_columns(Evaluation.id)
        .where(
            or_(
                and_(Evaluation.status == "queued", Evaluation.created_at < cutoff),
                and_(Evaluation.status == "running", Evaluation.heartbeat_at < cutoff),
            )
        )
    )
    return [row[0] for row in rows]
