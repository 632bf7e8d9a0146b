"""State changes of evaluation jobs and their chunks, each a conditional update so racing workers cannot collide.

An evaluation's samples are split into chunks (`evaluation_chunks`). A worker
holds a chunk through its attempt number: every write it makes is guarded by
`attempts = <its attempt>` and `status = 'running'`, so a worker that lost its
claim (the evaluation was cancelled or failed, or the chunk was taken over
after its worker went silent) can no longer write. Progress is counted from each
chunk's high-water mark, so a retried chunk never counts an image twice.

Lock order, everywhere: a transaction that writes both locks chunk rows first
(several in `index` order), then the evaluation row, so a cancel racing a
worker's progress write waits instead of deadlocking on PostgreSQL. Starting a
tenant's next sweep first locks its tenant row (tenant, chunk, evaluation).

Scheduling is fair between tenants: a queue message only says "run the next
chunk"; the worker takes, by a conditional update, the oldest queued chunk of
the tenant with the fewest running chunks (`claim_next_chunk`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session

from db import leases
from db.leases import Lease
from db.models import (
    ClassResult,
    Evaluation,
    EvaluationChunk,
    ExampleResult,
    Model,
    ShiftResult,
    Tenant,
    before,
    utcnow,
)

TERMINAL = ("succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running")
# A chunk is queued, running, done, or stopped (its evaluation ended without it).
CHUNK_OPEN = ("queued", "running")

Split = Callable[[int, int], list[tuple[int, int]]]


@dataclass(frozen=True)
class ChunkClaim:
    """A worker's hold on one chunk of an evaluation."""

    evaluation_id: str
    index: int
    attempt: int


@dataclass(frozen=True)
class ClaimedChunk:
    """A claimed chunk and the checkpoint it resumes from."""

    claim: ChunkClaim
    start: int
    stop: int
    position: int
    done: int
    total: int
    tally: dict[str, Any] | None


class LostClaim(Exception):
    """The evaluation was cancelled or failed, or the chunk was taken over: stop working on it."""


def plan_chunks(session: Session, evaluation_id: str, split: Split) -> list[int]:
    """Split a queued, unplanned evaluation into chunks; their indexes, or [] if there is nothing to plan.

    `split(num_samples, images_per_sample)` gives the `[start, stop)` sample ranges.
    """
    # The first statement writes the evaluation row: it serializes two planners of one evaluation.
    locked = session.execute(
        update(Evaluation)
        .where(Evaluation.id == evaluation_id, Evaluation.status == "queued",
               Evaluation.cancel_requested.is_(False))
        .values(heartbeat_at=utcnow())
    )
    if locked.rowcount != 1 or _has_chunks(session, evaluation_id):
        return []
    evaluation = session.get(Evaluation, evaluation_id)
    per_sample = evaluation.images_per_sample
    bounds = split(evaluation.num_samples, per_sample)
    now = utcnow()
    session.add_all(
        EvaluationChunk(
            evaluation_id=evaluation_id, index=index, start=start, stop=stop, status="queued",
            attempts=0, done=0, total=(stop - start) * per_sample, position=start, enqueued_at=now,
        )
        for index, (start, stop) in enumerate(bounds)
    )
    session.flush()
    return list(range(len(bounds)))


def _has_chunks(session: Session, evaluation_id: str) -> bool:
    return bool(session.execute(
        select(exists().where(EvaluationChunk.evaluation_id == evaluation_id))
    ).scalar())


def claim_chunk(
    session: Session, evaluation_id: str, index: int, worker: str, stale_after: timedelta,
    max_attempts: int,
) -> ClaimedChunk | None:
    """Take a queued chunk (or a running one whose worker went silent); None if it is not ours to run."""
    chunk = session.get(EvaluationChunk, (evaluation_id, index))
    evaluation = session.get(Evaluation, evaluation_id)
    if chunk is None or evaluation is None or chunk.status not in CHUNK_OPEN:
        return None
    if evaluation.status in TERMINAL or evaluation.cancel_requested:
        return None
    now = utcnow()
    cutoff = now - stale_after
    if chunk.status == "running" and not before(chunk.heartbeat_at, cutoff):
        return None
    if chunk.attempts >= max_attempts:
        _exhausted(session, evaluation_id, chunk)
        return None
    attempt = chunk.attempts + 1
    taken = session.execute(
        update(EvaluationChunk)
        .where(
            EvaluationChunk.evaluation_id == evaluation_id,
            EvaluationChunk.index == index,
            EvaluationChunk.attempts == chunk.attempts,
            or_(
                EvaluationChunk.status == "queued",
                and_(EvaluationChunk.status == "running", EvaluationChunk.heartbeat_at < cutoff),
            ),
        )
        .values(status="running", attempts=attempt, worker=worker, heartbeat_at=now,
                started_at=func.coalesce(EvaluationChunk.started_at, now))
    )
    if taken.rowcount != 1:
        session.rollback()
        return None
    started = session.execute(
        update(Evaluation)
        .where(Evaluation.id == evaluation_id, Evaluation.status.in_(ACTIVE),
               Evaluation.cancel_requested.is_(False))
        .values(
            status="running", worker=worker, heartbeat_at=now,
            started_at=func.coalesce(Evaluation.started_at, now),
            # The evaluation shows its most-retried chunk's attempt count.
            attempts=case((Evaluation.attempts < attempt, attempt), else_=Evaluation.attempts),
        )
    )
    if started.rowcount != 1:
        session.rollback()
        return None
    return ClaimedChunk(
        claim=ChunkClaim(evaluation_id, index, attempt), start=chunk.start, stop=chunk.stop,
        position=chunk.position, done=chunk.done, total=chunk.total, tally=chunk.tally,
    )


def claim_next_chunk(
    session: Session, worker: str, stale_after: timedelta, max_attempts: int, running_quota: int,
) -> ClaimedChunk | None:
    """Take the next chunk fairly: the oldest queued one of the tenant with the fewest running chunks.

    A tenant already running `running_quota` sweeps starts no other sweep (chunks of
    its running sweeps still go on). None when no chunk can be taken now. Commits
    what it decided about chunks it passed over (one out of attempts fails its sweep).
    """
    for _ in range(3):
        candidates = session.execute(_fair_candidates(running_quota).limit(8)).all()
        if not candidates:
            return None
        for evaluation_id, index, status, tenant_id in candidates:
            if status == "queued" and not _may_start_sweep(session, tenant_id, running_quota):
                session.rollback()
                continue
            claimed = claim_chunk(session, evaluation_id, index, worker, stale_after, max_attempts)
            if claimed is not None:
                return claimed
            session.commit()
    return None


def _fair_candidates(running_quota: int) -> Any:
    tenant = Evaluation.tenant_id
    running_chunks = (
        select(tenant.label("tenant_id"), func.count().label("n"))
        .select_from(EvaluationChunk).join(Evaluation, Evaluation.id == EvaluationChunk.evaluation_id)
        .where(EvaluationChunk.status == "running").group_by(tenant).subquery()
    )
    running_sweeps = (
        select(tenant.label("tenant_id"), func.count().label("n"))
        .where(Evaluation.status == "running").group_by(tenant).subquery()
    )
    return (
        select(EvaluationChunk.evaluation_id, EvaluationChunk.index, Evaluation.status, tenant)
        .join(Evaluation, Evaluation.id == EvaluationChunk.evaluation_id)
        .outerjoin(running_chunks, running_chunks.c.tenant_id == tenant)
        .outerjoin(running_sweeps, running_sweeps.c.tenant_id == tenant)
        .where(EvaluationChunk.status == "queued", Evaluation.status.in_(ACTIVE),
               Evaluation.cancel_requested.is_(False),
               or_(Evaluation.status == "running", func.coalesce(running_sweeps.c.n, 0) < running_quota))
        .order_by(func.coalesce(running_chunks.c.n, 0), Evaluation.created_at, Evaluation.id,
                  EvaluationChunk.index)
    )


def _may_start_sweep(session: Session, tenant_id: str, running_quota: int) -> bool:
    """Whether the tenant may start one more sweep; its row stays locked so two workers cannot both."""
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update(key_share=True)).all()
    return running_sweeps(session, tenant_id) < running_quota


def running_sweeps(session: Session, tenant_id: str) -> int:
    return session.execute(
        select(func.count()).select_from(Evaluation)
        .where(Evaluation.tenant_id == tenant_id, Evaluation.status == "running")
    ).scalar_one()


def has_queued_chunks(session: Session) -> bool:
    """Whether some active sweep has a chunk waiting (perhaps held back by its tenant's running quota)."""
    return bool(session.execute(select(exists().where(
        EvaluationChunk.status == "queued", EvaluationChunk.evaluation_id == Evaluation.id,
        Evaluation.status.in_(ACTIVE), Evaluation.cancel_requested.is_(False),
    ))).scalar())


def _exhausted(session: Session, evaluation_id: str, chunk: EvaluationChunk) -> None:
    fail_evaluation(
        session, evaluation_id, "attempts_exhausted",
        f"part {chunk.index} of the sweep (samples {chunk.start}-{chunk.stop - 1}) was started "
        f"{chunk.attempts} times and its worker died or was killed each time (a crash, running out "
        "of memory, or the hard time limit); giving up. Submit a smaller sweep (max_samples or a "
        "smaller grid) or raise SHIFTSCORE_MAX_ATTEMPTS",
    )


def _held(claim: ChunkClaim) -> list[Any]:
    return [
        EvaluationChunk.evaluation_id == claim.evaluation_id,
        EvaluationChunk.index == claim.index,
        EvaluationChunk.attempts == claim.attempt,
        EvaluationChunk.status == "running",
    ]


def record_chunk_progress(
    session: Session, claim: ChunkClaim, done: int, high_water: int,
    checkpoint: tuple[int, dict[str, Any]] | None = None,
) -> int:
    """Write a chunk's progress (and a `(position, tally)` checkpoint); return the new high-water mark.

    The evaluation's progress grows by what the chunk did beyond its high-water
    mark, so images swept again after a retry are not counted twice. Raises
    LostClaim if the chunk should stop.
    """
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if checkpoint is not None:
        values["position"], values["tally"] = checkpoint
    return max(high_water, _write_held(session, claim, values, done))


def _write_held(session: Session, claim: ChunkClaim, values: dict[str, Any], done: int) -> int:
    """Update the held chunk to `done` images and count the new ones on its evaluation; the new mark.

    The mark is read from the locked chunk row, so writing the same progress twice (a retry
    after a commit whose answer was lost) counts nothing twice. Raises LostClaim.
    """
    # Chunk row first, then the evaluation row: every writer takes the locks in this order.
    mark = session.execute(
        select(EvaluationChunk.done).where(*_held(claim)).with_for_update(key_share=True)
    ).scalar_one_or_none()
    if mark is not None:
        values = {**values, "done": max(done, mark)}
        session.execute(update(EvaluationChunk).where(*_held(claim)).values(**values))
        evaluation = session.execute(
            update(Evaluation)
            .where(Evaluation.id == claim.evaluation_id, Evaluation.status == "running",
                   Evaluation.cancel_requested.is_(False))
            .values(progress_done=Evaluation.progress_done + max(0, done - mark),
                    heartbeat_at=values["heartbeat_at"])
        )
        if evaluation.rowcount == 1:
            return values["done"]
    session.rollback()
    status = session.execute(
        select(Evaluation.status).where(Evaluation.id == claim.evaluation_id)
    ).scalar_one_or_none()
    raise LostClaim(f"the evaluation is {status}" if status in TERMINAL
                    else "the chunk was taken over by another worker")


def heartbeat_chunk(session: Session, claim: ChunkClaim) -> bool:
    """Show that the chunk's worker is alive; False once the claim is lost."""
    result = session.execute(update(EvaluationChunk).where(*_held(claim)).values(heartbeat_at=utcnow()))
    return result.rowcount == 1


def complete_chunk(
    session: Session, claim: ChunkClaim, tally: dict[str, Any], high_water: int, total: int,
    stop: int,
) -> list[dict[str, Any]] | None:
    """Mark the chunk done with its tally; if it was the last one, every chunk's tally in order.

    Raises LostClaim if the chunk no longer belongs to this worker. The caller
    finishes the evaluation in the same transaction when tallies come back.
    """
    now = utcnow()
    values = {"status": "done", "tally": tally, "done": total, "position": stop, "finished_at": now,
              "heartbeat_at": now}
    # The evaluation row is written inside: concurrent finishers of one evaluation queue up
    # behind its lock, so the last one sees every other chunk done.
    _write_held(session, claim, values, total)
    remaining = session.execute(
        select(func.count()).select_from(EvaluationChunk).where(
            EvaluationChunk.evaluation_id == claim.evaluation_id, EvaluationChunk.status != "done"
        )
    ).scalar_one()
    if remaining:
        return None
    return list(session.execute(
        select(EvaluationChunk.tally).where(EvaluationChunk.evaluation_id == claim.evaluation_id)
        .order_by(EvaluationChunk.index)
    ).scalars())


def extend_runtime(session: Session, evaluation_id: str, fields: dict[str, Any]) -> None:
    """Add `fields` to the evaluation's runtime record (what the sweep learned as it ran)."""
    runtime = session.execute(select(Evaluation.runtime).where(Evaluation.id == evaluation_id)).scalar_one()
    session.execute(update(Evaluation).where(Evaluation.id == evaluation_id)
                    .values(runtime={**(runtime or {}), **fields}))


def finish_evaluation(
    session: Session,
    evaluation_id: str,
    summary: dict[str, Any],
    shifts: list[dict[str, Any]],
    classes: list[dict[str, Any]],
    examples: list[dict[str, Any]],
) -> bool:
    """Record the results and mark the evaluation succeeded, once; False if it is no longer running."""
    result = session.execute(
        update(Evaluation)
        .where(Evaluation.id == evaluation_id, Evaluation.status == "running")
        .values(
            status="succeeded",
            summary=summary,
            finished_at=utcnow(),
            progress_done=Evaluation.progress_total,
            error_type=None,
            error_detail=None,
        )
    )
    if result.rowcount != 1:
        session.rollback()
        return False
    for table in (ShiftResult, ClassResult, ExampleResult):
        session.execute(delete(table).where(table.evaluation_id == evaluation_id))
    session.add_all(
        ShiftResult(evaluation_id=evaluation_id, position=i, dx=r["dx"], dy=r["dy"], angle=r.get("angle"),
                    scale=r.get("scale"), brightness=r.get("brightness"), n=r["n"], correct=r["correct"],
                    agreed=r["agreed"])
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
            worst_probability=e["worst_probability"],
            # A chunk tallied before worst_transform existed (an upgrade mid-sweep) records the shift alone.
            worst_angle=e.get("worst_transform", {}).get("angle"),
            worst_scale=e.get("worst_transform", {}).get("scale"),
            worst_brightness=e.get("worst_transform", {}).get("brightness"),
            flips=e["flips"],
        )
        for rank, e in enumerate(examples)
    )
    return True


def fail_evaluation(session: Session, evaluation_id: str, error_type: str, detail: str) -> bool:
    """Mark a queued or running evaluation failed with a message for the user, and stop its chunks."""
    _stop_chunks(session, evaluation_id)
    result = session.execute(
        update(Evaluation)
        .where(Evaluation.id == evaluation_id, Evaluation.status.in_(ACTIVE))
        .values(status="failed", error_type=error_type, error_detail=detail, finished_at=utcnow())
    )
    return result.rowcount == 1


def request_cancel(session: Session, evaluation: Evaluation) -> None:
    """Cancel a queued or running evaluation at once; its workers see it at their next write and stop."""
    _stop_chunks(session, evaluation.id)
    session.execute(
        update(Evaluation)
        .where(Evaluation.id == evaluation.id, Evaluation.status.in_(ACTIVE))
        .values(status="cancelled", cancel_requested=True, finished_at=utcnow())
    )
    session.refresh(evaluation)


def _stop_chunks(session: Session, evaluation_id: str) -> None:
    """Stop an evaluation's open chunks, locking them in index order first (the module's lock order)."""
    session.execute(
        select(EvaluationChunk.index)
        .where(EvaluationChunk.evaluation_id == evaluation_id, EvaluationChunk.status.in_(CHUNK_OPEN))
        .order_by(EvaluationChunk.index).with_for_update(key_share=True)
    ).all()
    session.execute(
        update(EvaluationChunk)
        .where(EvaluationChunk.evaluation_id == evaluation_id, EvaluationChunk.status.in_(CHUNK_OPEN))
        .values(status="stopped", finished_at=utcnow())
    )


def claim_validation(
    session: Session, model_id: str, worker: str, stale_after: timedelta, max_attempts: int
) -> Lease | None:
    """Take a model's validation (or one whose worker went silent); None if it is not ours to run.

    A model whose validation was started `max_attempts` times without finishing is
    marked invalid instead: its worker died each time, so it must not come back again.
    """
    def give_up(model: Model) -> dict[str, Any]:
        return {"error": f"checking the model was started {model.validation_attempts} times and never finished "
                         "(its worker died or was killed each time); upload it again once the cause is fixed"}

    return leases.take(session, leases.VALIDATION, model_id, worker, stale_after, max_attempts, give_up)


def record_model_validation(
    session: Session, claim: Lease, *, error: str | None, num_parameters: int | None,
    num_outputs: int | None, seconds_per_image: float | None = None, runtime: dict[str, Any] | None = None,
) -> bool:
    """Mark an uploaded model ready, or invalid with the reason; False if the claim was lost."""
    result = session.execute(
        update(Model)
        .where(*leases.held(leases.VALIDATION, claim))
        .values(
            status="invalid" if error else "ready",
            error=error,
            num_parameters=num_parameters,
            num_outputs=num_outputs,
            seconds_per_image=seconds_per_image,
            runtime=runtime,
            validation_heartbeat_at=utcnow(),
        )
    )
    return result.rowcount == 1


# --- What the reconciler asks -------------------------------------------------------------


def requeue_stale_chunks(session: Session, cutoff: datetime, max_attempts: int) -> list[tuple[str, int]]:
    """Put back in the queue the running chunks silent since `cutoff`; fail those out of attempts.

    Returns the `(evaluation_id, index)` of the chunks to enqueue again.
    """
    stale = session.execute(
        select(EvaluationChunk.evaluation_id, EvaluationChunk.index, EvaluationChunk.attempts)
        .join(Evaluation, Evaluation.id == EvaluationChunk.evaluation_id)
        .where(EvaluationChunk.status == "running", EvaluationChunk.heartbeat_at < cutoff,
               Evaluation.status == "running")
        .order_by(EvaluationChunk.evaluation_id, EvaluationChunk.index)
    ).all()
    requeued = []
    for evaluation_id, index, attempts in stale:
        if attempts >= max_attempts:
            chunk = session.get(EvaluationChunk, (evaluation_id, index))
            _exhausted(session, evaluation_id, chunk)
            continue
        result = session.execute(
            update(EvaluationChunk)
            .where(EvaluationChunk.evaluation_id == evaluation_id, EvaluationChunk.index == index,
                   EvaluationChunk.attempts == attempts, EvaluationChunk.status == "running",
                   EvaluationChunk.heartbeat_at < cutoff)
            .values(status="queued", enqueued_at=utcnow())
        )
        if result.rowcount == 1:
            requeued.append((evaluation_id, index))
    return requeued


@dataclass(frozen=True)
class Waiting:
    """Work that waits for a queue message: how much in all, and what has waited past the cutoff."""

    count: int
    evaluations: list[str]
    chunks: list[tuple[str, int]]
    models: list[str]
    datasets: list[str]


def waiting_work(session: Session, cutoff: datetime) -> Waiting:
    """Unplanned queued evaluations, queued chunks, and models and datasets whose lease nobody live holds."""
    unplanned = (
        select(Evaluation.id, Evaluation.created_at)
        .where(Evaluation.status == "queued", Evaluation.cancel_requested.is_(False),
               ~exists().where(EvaluationChunk.evaluation_id == Evaluation.id))
    )
    evaluations = session.execute(unplanned).all()
    # Queued chunks of an ended evaluation are inert (no worker takes them): nothing waits for them.
    chunks = session.execute(
        select(EvaluationChunk.evaluation_id, EvaluationChunk.index, EvaluationChunk.enqueued_at)
        .join(Evaluation, Evaluation.id == EvaluationChunk.evaluation_id)
        .where(EvaluationChunk.status == "queued", Evaluation.status.in_(ACTIVE))
        .order_by(EvaluationChunk.enqueued_at)
    ).all()
    # A model or dataset held by a live worker is not waiting; counting it would re-send its work.
    models = leases.unheld(session, leases.VALIDATION, cutoff)
    datasets = leases.unheld(session, leases.INGESTION, cutoff)
    return Waiting(
        count=len(evaluations) + len(chunks) + len(models) + len(datasets),
        evaluations=[row.id for row in evaluations if before(row.created_at, cutoff)],
        chunks=[(row.evaluation_id, row.index) for row in chunks if before(row.enqueued_at, cutoff)],
        models=[model_id for model_id, due in models if due],
        datasets=[dataset_id for dataset_id, due in datasets if due],
    )


def mark_enqueued(session: Session, chunks: list[tuple[str, int]]) -> None:
    """Note when queued chunks were last put on the queue."""
    now = utcnow()
    for evaluation_id, index in sorted(chunks):
        session.execute(
            update(EvaluationChunk)
            .where(EvaluationChunk.evaluation_id == evaluation_id, EvaluationChunk.index == index,
                   EvaluationChunk.status == "queued")
            .values(enqueued_at=now)
        )
