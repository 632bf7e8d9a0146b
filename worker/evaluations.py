"""Run one evaluation: claim it, load its model and data, sweep, record. No Celery here."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch

from db import jobs
from db.blobs import blob_path
from db.models import Dataset, Evaluation, Model
from db.session import session_scope
from shiftscore.settings import Settings, get_settings
from worker.engine.grid import build_grid
from worker.engine.metrics import class_rows, shift_rows, summary
from worker.engine.sweep import SweepError, SweepPlan, run_sweep, sample_indices
from worker.engine.tally import Tally
from worker.model_loading import ModelLoadError, count_parameters, load_model, validate_model

log = logging.getLogger(__name__)

_MODEL_CACHE_SIZE = 4
_models: OrderedDict[tuple[str, str], Any] = OrderedDict()


@dataclass(frozen=True)
class Job:
    """Everything a sweep needs, read from the database before the long work starts."""

    claim: jobs.Claim
    request: dict[str, Any]
    model: dict[str, Any]
    model_path: Path
    images_path: Path
    targets_path: Path
    checkpoint: dict[str, Any] | None


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


def _claim(evaluation_id: str, worker: str, settings: Settings) -> Job | None:
    stale_after = timedelta(seconds=max(60.0, 20 * settings.progress_interval_s))
    with session_scope() as session:
        claim = jobs.claim_evaluation(session, evaluation_id, worker, stale_after, settings.max_attempts)
        if claim is None:
            return None
        evaluation = session.get(Evaluation, evaluation_id)
        model = session.get(Model, evaluation.model_id)
        dataset = session.get(Dataset, evaluation.dataset_id)
        cache = _cache_dir(settings)
        return Job(
            claim=claim,
            request=evaluation.request,
            model=_model_fields(model),
            model_path=blob_path(session, model.sha256, cache),
            images_path=blob_path(session, dataset.images_blob, cache),
            targets_path=blob_path(session, dataset.targets_blob, cache),
            checkpoint=evaluation.checkpoint,
        )


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
    """Writes progress at most every `interval` seconds, and a checkpoint after each chunk."""

    def __init__(self, claim: jobs.Claim, total: int, interval: float) -> None:
        self.claim, self.total, self.interval = claim, total, interval
        self.done = 0
        self.last = 0.0

    def progress(self, done: int) -> None:
        self.done = done
        if time.monotonic() - self.last >= self.interval:
            self._write(None)

    def chunk(self, tally: Tally, next_start: int) -> None:
        self._write({"start": next_start, "tally": tally.to_json()})

    def _write(self, checkpoint: dict[str, Any] | None) -> None:
        with session_scope() as session:
            jobs.record_progress(session, self.claim, self.done, self.total, checkpoint)
        self.last = time.monotonic()


def run_evaluation(
    evaluation_id: str, worker: str, time_limit_errors: tuple[type[BaseException], ...] = ()
) -> None:
    """Claim the evaluation and sweep it to a terminal status; return quietly if not ours.

    `time_limit_errors` are the exceptions the task runner raises when time is up.
    """
    settings = get_settings()
    job = _claim(evaluation_id, worker, settings)
    if job is None:
        return
    try:
        _sweep(job, settings)
    except jobs.LostClaim as exc:
        log.info("evaluation %s stopped: %s", evaluation_id, exc)
    except (SweepError, ModelLoadError) as exc:
        _fail(job, "sweep_error", str(exc))
    except time_limit_errors:
        _fail(job, "time_limit", (
            f"the sweep ran past its time limit of {settings.task_soft_time_limit} s; "
            "use max_samples or a smaller grid, or raise SHIFTSCORE_TASK_SOFT_TIME_LIMIT"
        ))
    except Exception as exc:  # noqa: BLE001 — a job must end in a status, never vanish
        log.exception("evaluation %s crashed", evaluation_id)
        _fail(job, "internal_error", f"the worker hit an unexpected error: {type(exc).__name__}: {exc}")


def _fail(job: Job, error_type: str, detail: str) -> None:
    with session_scope() as session:
        jobs.fail_evaluation(session, job.claim.evaluation_id, job.claim, error_type, detail)


def _sweep(job: Job, settings: Settings) -> None:
    device = pick_device(settings.device)
    model = loaded_model(job.model, job.model_path, device)
    images = np.load(job.images_path, mmap_mode="r")
    labels = np.load(job.targets_path)
    plan = plan_for(job.request, job.model["input"])
    indices = sample_indices(len(labels), job.request.get("max_samples"), job.request.get("seed", 0))
    reporter = _Reporter(job.claim, len(indices) * plan.images_per_sample(), settings.progress_interval_s)
    tally, start = None, 0
    if job.checkpoint:
        tally, start = Tally.from_json(job.checkpoint["tally"]), job.checkpoint["start"]
        reporter.done = start * plan.images_per_sample()
    reporter.progress(reporter.done)
    tally = run_sweep(
        model, images, labels, indices, plan,
        batch_size=settings.batch_size, device=device, tally=tally, start=start,
        on_progress=reporter.progress, on_chunk=reporter.chunk,
    )
    grid = plan.grid
    with session_scope() as session:
        jobs.finish_evaluation(
            session, job.claim, summary(tally, grid), shift_rows(tally, grid),
            class_rows(tally, grid), tally.examples,
        )


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
