"""Run an evaluation in chunks: plan, claim, load, sweep, record; the last chunk merges. No Celery here."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from db import jobs
from db.blobs import blob_path
from db.models import Dataset, Evaluation, Model
from db.session import session_scope
from shiftscore.settings import Settings, get_settings
from worker import profiles
from worker.chunking import chunk_bounds
from worker.engine.grid import build_grid
from worker.engine.metrics import class_rows, shift_rows, summary
from worker.engine.sweep import SweepError, SweepPlan, run_sweep, sample_indices
from worker.engine.tally import Tally
from worker.model_loading import (
    ModelLoadError,
    count_parameters,
    load_model,
    validate_model,
)
from worker.queue import enqueue_chunk

log = logging.getLogger(__name__)

_MODEL_CACHE_SIZE = 4
_models: OrderedDict[tuple[str, str], Any] = OrderedDict()


@dataclass(frozen=True)
class Job:
    """Everything a chunk's sweep needs, read from the database before the long work starts."""

    claimed: jobs.ClaimedChunk
    request: dict[str, Any]
    model: dict[str, Any]
    model_path: Path
    images_path: Path
    targets_path: Path


def pick_device(setting: str) -> torch.device:
    """The device the settings ask for; `auto` takes CUDA when there is one."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def _cache_dir(settings: Settings) -> Path:
    return settings.storage_dir / "cache"


def _model_fields(model: Model) -> dict[str, Any]:
    return {
        "id": model.id,
        "format": model.format,
        "sha256": model.sha256,
        "architecture": model.architecture,
        "options": model.architecture_options or {},
        "input": model.input_spec,
        "task": model.task,
    }


def loaded_model(fields: dict[str, Any], path: Path, device: torch.device) -> Any:
    """The model ready to call, cached per process (a worker sweeps the same model often)."""
    key = (fields["id"], str(device))
    if key in _models:
        _models.move_to_end(key)
        return _models[key]
    model = load_model(
        fields["format"], path, architecture=fields["architecture"], options=fields["options"],
        input_spec=fields["input"],
    )
    if isinstance(model, torch.nn.Module):
        model = model.to(device)
    _models[key] = model
    while len(_models) > _MODEL_CACHE_SIZE:
        _models.popitem(last=False)
    return model


def plan_for(request: dict[str, Any], input_spec: dict[str, Any]) -> SweepPlan:
    """The engine's plan for a stored evaluation request and the model's declared input."""
    return SweepPlan(
        grid=build_grid(request["shifts"]),
        padding=request["padding"],
        fill=float(request["fill"]),
        mean=tuple(input_spec["mean"]),
        std=tuple(input_spec["std"]),
        input_hw=(input_spec["height"], input_spec["width"]),
    )


class _Reporter:
    """Writes a chunk's progress at most every `interval` seconds, and checkpoints as often."""

    def __init__(self, claimed: jobs.ClaimedChunk, interval: float) -> None:
        self.claimed, self.interval = claimed, interval
        self.high_water = claimed.done
        self.done = (claimed.position - claimed.start) * (claimed.total // max(1, claimed.stop - claimed.start))
        self.last_progress = self.last_checkpoint = time.monotonic()

    def progress(self, done: int) -> None:
        self.done = done
        if time.monotonic() - self.last_progress >= self.interval:
            self._write(None)

    def chunk(self, tally: Tally, next_start: int) -> None:
        if time.monotonic() - self.last_checkpoint >= self.interval:
            self._write((self.claimed.start + next_start, tally.to_json()))
            self.last_checkpoint = time.monotonic()

    def _write(self, checkpoint: tuple[int, dict[str, Any]] | None) -> None:
        with session_scope() as session:
            self.high_water = jobs.record_chunk_progress(
                session, self.claimed.claim, self.done, self.high_water, checkpoint
            )
        self.last_progress = time.monotonic()


class _Heartbeat:
    """Marks the chunk alive from a side thread, so a long forward batch never looks like a dead worker."""

    def __init__(self, claim: jobs.ChunkClaim, every: float) -> None:
        self.claim, self.every = claim, every
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="chunk-heartbeat", daemon=True)

    def __enter__(self) -> "_Heartbeat":
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)

    def _beat(self) -> None:
        while not self.stopped.wait(self.every):
            try:
                with session_scope() as session:
                    if not jobs.heartbeat_chunk(session, self.claim):
                        return
            except Exception:  # noqa: BLE001 — a missed beat is retried; the sweep goes on
                log.warning("heartbeat of %s failed", self.claim, exc_info=True)


def run_evaluation(
    evaluation_id: str, worker: str, time_limit_errors: tuple[type[BaseException], ...] = ()
) -> None:
    """Split a queued evaluation into chunks, queue all but the first for any worker, sweep the first here.

    `time_limit_errors` are the exceptions the task runner raises when time is up.
    """
    settings = get_settings()
    split = partial(chunk_bounds, chunk_images=settings.chunk_images)
    with session_scope() as session:
        planned = jobs.plan_chunks(session, evaluation_id, split)
    if not planned:
        return
    for index in planned[1:]:
        try:
            enqueue_chunk(evaluation_id, index)
        except Exception:  # noqa: BLE001 — the chunks are committed; the reconciler sends them later
            log.exception("could not enqueue the chunks of %s from %d on; the reconciler will", evaluation_id, index)
            break
    run_chunk(evaluation_id, planned[0], worker, time_limit_errors)


def run_chunk(
    evaluation_id: str, index: int, worker: str, time_limit_errors: tuple[type[BaseException], ...] = ()
) -> None:
    """Claim one chunk and sweep it; the last chunk to finish records the evaluation's result."""
    settings = get_settings()
    job = _claim(evaluation_id, index, worker, settings)
    if job is None:
        return
    try:
        with _Heartbeat(job.claimed.claim, max(0.1, settings.stale_after_s / 4)):
            _sweep(job, settings)
    except jobs.LostClaim as exc:
        log.info("chunk %d of evaluation %s stopped: %s", index, evaluation_id, exc)
    except (SweepError, ModelLoadError) as exc:
        _fail(evaluation_id, "sweep_error", str(exc))
    except time_limit_errors:
        _fail(evaluation_id, "time_limit", (
            f"the sweep ran past its time limit of {settings.task_soft_time_limit} s per part "
            f"(a part is at least {settings.chunk_images} images); use max_samples or a smaller "
            "grid, or raise SHIFTSCORE_TASK_SOFT_TIME_LIMIT"
        ))
    except Exception as exc:  # noqa: BLE001 — a job must end in a status, never vanish
        log.exception("chunk %d of evaluation %s crashed", index, evaluation_id)
        _fail(evaluation_id, "internal_error", f"the worker hit an unexpected error: {type(exc).__name__}: {exc}")


def _claim(evaluation_id: str, index: int, worker: str, settings: Settings) -> Job | None:
    stale_after = timedelta(seconds=settings.stale_after_s)
    with session_scope() as session:
        claimed = jobs.claim_chunk(session, evaluation_id, index, worker, stale_after, settings.max_attempts)
        if claimed is None:
            return None
        evaluation = session.get(Evaluation, evaluation_id)
        model = session.get(Model, evaluation.model_id)
        dataset = session.get(Dataset, evaluation.dataset_id)
        cache = _cache_dir(settings)
        return Job(
            claimed=claimed,
            request=evaluation.request,
            model=_model_fields(model),
            model_path=blob_path(session, model.sha256, cache),
            images_path=blob_path(session, dataset.images_blob, cache),
            targets_path=blob_path(session, dataset.targets_blob, cache),
        )


def _fail(evaluation_id: str, error_type: str, detail: str) -> None:
    with session_scope() as session:
        jobs.fail_evaluation(session, evaluation_id, error_type, detail)


def _sweep(job: Job, settings: Settings) -> None:
    claimed = job.claimed
    device = pick_device(settings.device)
    model = loaded_model(job.model, job.model_path, device)
    images = np.load(job.images_path, mmap_mode="r")
    labels = np.load(job.targets_path)
    plan = plan_for(job.request, job.model["input"])
    indices = sample_indices(len(labels), job.request.get("max_samples"), job.request.get("seed", 0))
    reporter = _Reporter(claimed, settings.progress_interval_s)
    if job.model["task"] == "segmentation":
        profiles.sweep_segmentation_chunk(
            claimed, job.request, model, images, labels, indices, plan, settings.batch_size, device,
            (reporter.progress, reporter.chunk, lambda: reporter.high_water),
        )
        return
    tally = Tally.from_json(claimed.tally) if claimed.tally else None
    tally = run_sweep(
        model, images, labels, indices[claimed.start : claimed.stop], plan,
        batch_size=settings.batch_size, device=device, tally=tally,
        start=claimed.position - claimed.start, on_progress=reporter.progress, on_chunk=reporter.chunk,
    )
    chunk_tally = profiles.with_layer_profile(
        tally.to_json(), job.request, model, images, indices[claimed.start : claimed.stop], plan,
        settings.batch_size, device,
    )
    with session_scope() as session:
        tallies = jobs.complete_chunk(
            session, claimed.claim, chunk_tally, reporter.high_water, claimed.total, claimed.stop
        )
        if tallies is None:
            return
        merged = merge_tallies(tallies)
        grid = plan.grid
        if jobs.finish_evaluation(
            session, claimed.claim.evaluation_id, summary(merged, grid), shift_rows(merged, grid),
            class_rows(merged, grid), merged.examples,
        ):
            profiles.record_layers(session, claimed.claim.evaluation_id, tallies, grid)


def merge_tallies(tallies: list[dict[str, Any]]) -> Tally:
    """One tally from the chunks' tallies (integer counts: the order cannot change the sum)."""
    merged = Tally.from_json(tallies[0])
    for data in tallies[1:]:
        merged.merge(Tally.from_json(data))
    return merged


def validate_uploaded_model(model_id: str) -> None:
    """Load an uploaded model, run it on a dummy batch, and mark it ready or invalid."""
    settings = get_settings()
    with session_scope() as session:
        model = session.get(Model, model_id)
        if model is None or model.status != "validating":
            return
        fields = _model_fields(model)
        path = blob_path(session, model.sha256, _cache_dir(settings))
    error, parameters, outputs = None, None, None
    try:
        loaded = load_model(
            fields["format"], path, architecture=fields["architecture"], options=fields["options"],
            input_spec=fields["input"],
        )
        checked = validate_model(loaded, fields["input"], fields["task"])
        parameters, outputs = count_parameters(loaded), checked["num_outputs"]
    except ModelLoadError as exc:
        error = str(exc)
    except Exception as exc:  # noqa: BLE001 — any failure to load is the upload's problem
        log.exception("model %s failed validation", model_id)
        error = f"the model could not be loaded: {type(exc).__name__}: {exc}"
    with session_scope() as session:
        jobs.record_model_validation(
            session, model_id, error=error, num_parameters=parameters, num_outputs=outputs
        )
