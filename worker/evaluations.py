"""Run an evaluation in chunks: plan, claim, load, sweep, record; the last chunk merges. No Celery here.

A queue message only says "run the next chunk"; which one is the database's fair
choice between tenants (db.jobs.claim_next_chunk). Every write of a chunk is
retried through transient database errors (db.session.retrying); one that keeps
failing leaves the chunk to the reconciler, which gives it to a worker again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

from core.chunking import chunk_bounds
from core.grid import build_sweep_grid
from core.queue import enqueue_chunk
from core.runtimes import evaluation_runtime, reference_backend
from core.settings import Settings, get_settings
from db import jobs
from db.blobs import blob_path, prune_cache
from db.models import Dataset, Evaluation, Model
from db.session import StillFailing, is_transient, retrying, session_scope
from worker import completion
from worker.engine.layers import LAYERS
from worker.engine.plan import sweep_kind
from worker.heartbeat import Heartbeat
from worker.sandbox import results
from worker.sandbox.cage import CageFailure
from worker.sandbox.failures import explain
from worker.sandbox.pool import POOL, batch_deadline, cage_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """Everything a chunk's sweep needs, read from the database before the long work starts."""

    claimed: jobs.ClaimedChunk
    request: dict[str, Any]
    model: dict[str, Any]
    seconds_per_image: float | None
    runtime: dict[str, Any]
    model_path: Path
    images_path: Path
    targets_path: Path


def model_fields(model: Model) -> dict[str, Any]:
    """What the sandbox needs to load a model (no ids or paths of the worker's)."""
    return {
        "format": model.format,
        "architecture": model.architecture,
        "options": model.architecture_options or {},
        "input": model.input_spec,
        "task": model.task,
    }


class _Reporter:
    """Writes a chunk's progress at most every `interval` seconds; checkpoints come throttled from the cage."""

    def __init__(self, claimed: jobs.ClaimedChunk, interval: float) -> None:
        self.claimed, self.interval = claimed, interval
        self.high_water = claimed.done
        self.done = 0
        self.last_progress = time.monotonic()

    def progress(self, done: int) -> None:
        self.done = done
        if time.monotonic() - self.last_progress >= self.interval:
            self._write(None)

    def checkpoint(self, tally: dict[str, Any], next_start: int) -> None:
        self._write((self.claimed.start + next_start, tally))

    def _write(self, checkpoint: tuple[int, dict[str, Any]] | None) -> None:
        def write() -> int:
            with session_scope() as session:
                return jobs.record_chunk_progress(session, self.claimed.claim, self.done, self.high_water, checkpoint)

        self.high_water = retrying(write)
        self.last_progress = time.monotonic()


def _beat_chunk(claim: jobs.ChunkClaim) -> bool:
    with session_scope() as session:
        return jobs.heartbeat_chunk(session, claim)


def run_evaluation(
    evaluation_id: str, worker: str, time_limit_errors: tuple[type[BaseException], ...] = ()
) -> None:
    """The first message of a sweep: plan it if the API did not (rows from before), then run the next chunk.

    `time_limit_errors` are the exceptions the task runner raises when time is up.
    """
    settings = get_settings()
    split = partial(chunk_bounds, chunk_images=settings.chunk_images)
    with session_scope() as session:
        planned = jobs.plan_chunks(session, evaluation_id, split)
    for index in planned[1:]:
        try:
            enqueue_chunk(evaluation_id, index)
        except Exception:  # noqa: BLE001 — the chunks are committed; the reconciler sends them later
            log.exception("could not enqueue the chunks of %s from %d on; the reconciler will", evaluation_id, index)
            break
    run_next_chunk(worker, (evaluation_id, 0), time_limit_errors)


def run_next_chunk(
    worker: str, message: tuple[str, int], time_limit_errors: tuple[type[BaseException], ...] = ()
) -> None:
    """Claim the next chunk fairly and sweep it in its model's sandbox; the last to finish records the result.

    `message` names the chunk the queue message was sent for; any queued chunk may run instead.
    When the only waiting chunks are held back by their tenant's running quota, the message
    goes back on the queue (after a pause) so that they still have one when a sweep ends.
    """
    settings = get_settings()
    # The part stops itself just before Celery's soft limit would interrupt it at a random line
    # (say, inside a database write); the soft limit stays as the backstop.
    until = time.monotonic() + max(1.0, settings.task_soft_time_limit - 1.0)
    _prune_cache_now_and_then(settings)
    try:
        claimed = retrying(partial(_claim_next, worker, settings))
        if claimed is None:
            if retrying(_held_back):
                time.sleep(HELD_BACK_PAUSE_S)
                enqueue_chunk(*message)
            return
        job = retrying(partial(_load, claimed, settings))
    except StillFailing as exc:
        # A chunk claimed but not started is put back by the reconciler, like one whose worker died.
        log.warning("no chunk started: database errors (%s); the reconciler re-sends the work", exc)
        return
    evaluation_id, index = claimed.claim.evaluation_id, claimed.claim.index
    try:
        with Heartbeat(partial(_beat_chunk, job.claimed.claim), max(0.1, settings.stale_after_s / 4)):
            try:
                _sweep(job, settings, until)
            except BaseException:
                # A cage that did not finish its job cleanly is never used again.
                POOL.discard()
                raise
    except jobs.LostClaim as exc:
        log.info("chunk %d of evaluation %s stopped: %s", index, evaluation_id, exc)
    except CageFailure as exc:
        error_type, detail = explain(exc, cage_config(settings), "sweep")
        if exc.kind == "part_time":
            error_type, detail = "time_limit", _time_limit_detail(settings)
        log.warning("chunk %d of evaluation %s: %s (%s)", index, evaluation_id, detail, exc.kind)
        _fail(job.claimed.claim, error_type, detail)
    except StillFailing as exc:
        # The chunk stays running without a heartbeat: the reconciler puts it back after
        # SHIFTSCORE_STALE_AFTER and a worker resumes it from its last checkpoint.
        log.warning("chunk %d of evaluation %s left to the reconciler: database writes failed (%s)",
                    index, evaluation_id, exc)
    except time_limit_errors:
        _fail(job.claimed.claim, "time_limit", _time_limit_detail(settings))
    except Exception as exc:  # noqa: BLE001 — a job must end in a status, never vanish
        if is_transient(exc):
            log.warning("chunk %d of evaluation %s left to the reconciler: %s", index, evaluation_id, exc)
            return
        log.exception("chunk %d of evaluation %s crashed", index, evaluation_id)
        _fail(job.claimed.claim, "internal_error", f"the worker hit an unexpected error: {type(exc).__name__}")


def _time_limit_detail(settings: Settings) -> str:
    return (
        f"the sweep ran past its time limit of {settings.task_soft_time_limit} s per part "
        f"(a part is at least {settings.chunk_images} images); use max_samples or a smaller "
        "grid, or raise SHIFTSCORE_TASK_SOFT_TIME_LIMIT"
    )


# A worker whose message found only chunks held back by a running quota waits this long before
# putting the message back, so that an otherwise idle cluster does not spin on it.
HELD_BACK_PAUSE_S = 1.0
_last_prune = 0.0


def _held_back() -> bool:
    with session_scope() as session:
        return jobs.has_queued_chunks(session)


def _prune_cache_now_and_then(settings: Settings) -> None:
    """Drop reclaimed blobs from this host's cache, at most once per SHIFTSCORE_RECLAIM_PERIOD."""
    global _last_prune
    if time.monotonic() - _last_prune < settings.reclaim_period_s:
        return
    _last_prune = time.monotonic()
    try:
        with session_scope() as session:
            removed = prune_cache(session, settings.cache_dir)
    except Exception:  # noqa: BLE001 — a cache left as it was costs disk, not results
        log.warning("could not prune the blob cache", exc_info=True)
        return
    if removed:
        log.info("removed %d reclaimed blob(s) from the cache", removed)


def _claim_next(worker: str, settings: Settings) -> jobs.ClaimedChunk | None:
    stale_after = timedelta(seconds=settings.stale_after_s)
    with session_scope() as session:
        return jobs.claim_next_chunk(session, worker, stale_after, settings.max_attempts, settings.quota_running)


def _load(claimed: jobs.ClaimedChunk, settings: Settings) -> Job:
    """What the claimed chunk's sweep needs; the blobs are fetched to this host's cache."""
    with session_scope() as session:
        evaluation = session.get(Evaluation, claimed.claim.evaluation_id)
        model = session.get(Model, evaluation.model_id)
        dataset = session.get(Dataset, evaluation.dataset_id)
        cache = settings.cache_dir
        return Job(
            claimed=claimed,
            request=evaluation.request,
            model={"id": model.id, **model_fields(model)},
            seconds_per_image=model.seconds_per_image,
            runtime=evaluation.runtime or evaluation_runtime(model.format, None, "auto", settings.batch_size),
            model_path=blob_path(session, model.sha256, cache),
            images_path=blob_path(session, dataset.images_blob, cache),
            targets_path=blob_path(session, dataset.targets_blob, cache),
        )


def _fail(claim: jobs.ChunkClaim, error_type: str, detail: str) -> None:
    """Fail the evaluation, unless this worker no longer holds the chunk (someone else owns the outcome)."""
    def write() -> None:
        with session_scope() as session:
            if jobs.heartbeat_chunk(session, claim):
                jobs.fail_evaluation(session, claim.evaluation_id, error_type, detail)

    try:
        retrying(write)
    except StillFailing:
        log.warning("could not record the failure of %s; the reconciler retries its chunk", claim.evaluation_id)


def _sweep(job: Job, settings: Settings, until: float) -> None:
    claimed = job.claimed
    config = cage_config(settings)
    backend, batch_size = job.runtime["backend"], int(job.runtime["batch_size"])
    key = (job.model["id"], backend, job.model_path, job.images_path, job.targets_path, config)
    inputs = {"model": job.model_path, "images": job.images_path, "targets": job.targets_path}
    fields = {**{name: value for name, value in job.model.items() if name != "id"}, "backend": backend}
    cage, fresh = POOL.take(key, inputs, fields, config)
    if fresh:
        cage.run({"op": "load"}, config.wall_seconds, "loading the model", until=until)
    grid = build_sweep_grid(job.request)
    reporter = _Reporter(claimed, settings.progress_interval_s)
    task = job.model["task"]
    on_event = partial(_on_sweep_event, reporter, task, grid.size, bool(job.request.get(LAYERS)))
    result = cage.run(
        {
            "op": "sweep", "request": job.request, "start": claimed.start, "stop": claimed.stop,
            "position": claimed.position, "tally": claimed.tally, "batch_size": batch_size,
            "checkpoint_every": settings.progress_interval_s,
        },
        batch_deadline(config, job.seconds_per_image, batch_size), "a forward batch of the sweep",
        on_event, until,
    )
    POOL.release(cage)
    chunk_tally = result.get("tally")
    try:
        results.check_chunk_tally(chunk_tally, task, grid.size, claimed.stop - claimed.start,
                                  bool(job.request.get(LAYERS)), backend != reference_backend(job.model["format"]))
    except results.BadResult as exc:
        raise CageFailure("protocol", str(exc)) from exc
    retrying(partial(completion.complete_chunk, sweep_kind(task, job.request), claimed, chunk_tally,
                     reporter.high_water, grid))


def _on_sweep_event(reporter: _Reporter, task: str, num_shifts: int, layers: bool, message: dict[str, Any]) -> None:
    """Progress and checkpoints from the cage, checked before they are written."""
    event = message.get("event")
    if event == "progress":
        done = message.get("done")
        if isinstance(done, bool) or not isinstance(done, int) or not 0 <= done <= reporter.claimed.total:
            raise CageFailure("protocol", "the sandbox reported impossible progress")
        reporter.progress(done)
    elif event == "checkpoint":
        next_start, tally = message.get("next_start"), message.get("tally")
        span = reporter.claimed.stop - reporter.claimed.start
        if isinstance(next_start, bool) or not isinstance(next_start, int) or not 0 < next_start <= span:
            raise CageFailure("protocol", "the sandbox reported an impossible checkpoint")
        try:
            results.check_checkpoint(tally, task, num_shifts, next_start, span, layers)
        except results.BadResult as exc:
            raise CageFailure("protocol", f"a checkpoint from the sandbox is malformed: {exc}") from exc
        reporter.checkpoint(tally, next_start)
    elif event != "alive":
        raise CageFailure("protocol", "the sandbox sent a message nobody asked for")

