"""Evaluation commands: check a sweep request against its model and dataset, persist, enqueue."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.http.errors import Conflict, NotFound, Unprocessable
from api.http.pagination import page_of, paginate, paginate_by_key
from api.http.schemas import EvaluationCreate, EvaluationFilter
from api.http.settings import current_settings
from api.services.datasets import get_dataset
from api.services.layers import check_layers_request, check_task, is_segmentation, segmentation_shift_page
from api.services.models import get_model
from api.services.quotas import check_queued, lock_tenant
from api.services.sweeps import digest, sweep_key
from api.services.webhooks import check_webhook_url
from core.chunking import chunk_bounds
from core.grid import AXES, Grid, GridError, build_sweep_grid, check_grid_fits, plain
from core.queue import enqueue_chunk, enqueue_evaluation
from core.sweep import samples_swept
from core.marginals import marginal_rows
from db import jobs
from db.blobs import hold_blob, read_blob
from db.models import ClassResult, Dataset, Evaluation, EvaluationTag, ExampleResult, Model, ShiftResult
from db.session import session_scope
from core.runtimes import TORCH, evaluation_runtime, reference_backend

log = logging.getLogger(__name__)


def _check_fit(body: EvaluationCreate, model: Model, dataset: Dataset) -> Grid:
    """Every business rule between the request, the model and the dataset (422s)."""
    if model.status == "validating":
        raise Conflict(f"model '{model.id}' is still being validated; poll GET /v1/models/{model.id} "
                       "until its status is 'ready', then submit again")
    if model.status == "invalid":
        raise Unprocessable(f"model '{model.id}' is invalid and cannot be evaluated: {model.error}")
    if dataset.status == "processing":
        raise Conflict(f"dataset '{dataset.id}' is still being processed; poll GET /v1/datasets/{dataset.id} "
                       "until its status is 'ready', then submit again")
    if dataset.status == "invalid":
        raise Unprocessable(f"dataset '{dataset.id}' is invalid and cannot be evaluated: {dataset.error}")
    check_layers_request(body.layers, model)
    check_task(model, dataset)
    _check_runtime_options(body, model)
    spec = model.input_spec
    if dataset.channels != spec["channels"]:
        raise Unprocessable(
            f"the dataset's images have {dataset.channels} channel(s) but the model declares "
            f"{spec['channels']}"
        )
    try:
        grid = build_sweep_grid(_axes(body))
        check_grid_fits(grid, body.padding, (dataset.height, dataset.width), (spec["height"], spec["width"]))
    except GridError as exc:
        raise Unprocessable(str(exc), errors=[{"field": _grid_field(str(exc)), "message": str(exc)}]) from None
    if grid.axes and (body.layers or model.task == "segmentation"):
        raise Unprocessable(
            "angle, scale and brightness sweeps are for classifiers without a layer profile; a layer profile "
            "or a segmentation sweep takes shifts only",
            errors=[{"field": grid.axes[0].name, "message": "not available with layers or segmentation"}],
        )
    if model.num_outputs is not None and dataset.max_label >= model.num_outputs:
        raise Unprocessable(
            f"the dataset has labels up to {dataset.max_label} but the model returns only "
            f"{model.num_outputs} logits"
        )
    return grid


def _check_runtime_options(body: EvaluationCreate, model: Model) -> None:
    """`backend` and `early_exit` against the model (422s)."""
    if body.backend == TORCH and reference_backend(model.format) != TORCH:
        raise Unprocessable("an ONNX model runs on ONNX Runtime, its own runtime; backend 'torch' is for "
                            "torchscript, exported and state_dict models",
                            errors=[{"field": "backend", "message": "not available for format 'onnx'"}])
    if body.early_exit and (body.layers or model.task == "segmentation"):
        raise Unprocessable("early_exit measures a classifier's worst case only; it cannot be combined with "
                            "layers or used on a segmentation model",
                            errors=[{"field": "early_exit", "message": "classification without layers only"}])
    if body.early_exit and any(getattr(body, name) is not None for name in AXES):
        raise Unprocessable("early_exit gates on translations only; drop angle, scale and brightness, or "
                            "early_exit to measure them",
                            errors=[{"field": "early_exit", "message": "translation sweeps only"}])


def _axes(body: EvaluationCreate) -> dict[str, Any]:
    """The request's grid axes as plain data; the axes not named are left out."""
    named = {name: getattr(body, name) for name in ("shifts", *AXES)}
    return {name: axis.model_dump() for name, axis in named.items() if axis is not None}


def _grid_field(message: str) -> str:
    """The request field a grid error is about, from the start of its message."""
    return next((name for name in (*AXES, "padding") if message.startswith(name)), "shifts")


def _stored_request(body: EvaluationCreate, dataset: Dataset) -> dict[str, Any]:
    request = body.model_dump(exclude={"layers", "webhook_url", "shifts", *AXES})
    request["dataset_id"] = dataset.id
    request.update(_axes(body))
    if body.layers:
        request["layers"] = body.layers
    return request


def _queued_evaluation(tenant_id: str, body: EvaluationCreate, model: Model, dataset: Dataset, grid: Grid,
                       request_sha: str, idempotency_key: str | None) -> Evaluation:
    """The new row, with what the planner and workers read from it fixed now: samples and views per sample."""
    num_samples = samples_swept(dataset.num_samples, body.max_samples)
    request = _stored_request(body, dataset)
    return Evaluation(
        tenant_id=tenant_id,
        model_id=model.id,
        dataset_id=dataset.id,
        request=request,
        sweep_key=sweep_key(dataset.id, grid, request),
        tags=body.tags,
        idempotency_key=idempotency_key,
        request_sha256=request_sha,
        status="queued",
        num_samples=num_samples,
        images_per_sample=grid.images_per_sample,
        progress_total=num_samples * grid.images_per_sample,
        webhook_url=body.webhook_url,
        runtime=evaluation_runtime(model.format, model.runtime, body.backend, current_settings().batch_size),
    )


def submit_evaluation(tenant_id: str, body: EvaluationCreate, idempotency_key: str | None) -> tuple[Evaluation, bool]:
    """Persist a queued evaluation split into chunks, then one queue message per chunk.

    A message only says "run the next chunk": workers pick chunks fairly between
    tenants (db.jobs.claim_next_chunk). A repeated Idempotency-Key returns the first.
    """
    request_sha = digest(body.model_dump(mode="json"))
    if body.webhook_url:
        check_webhook_url(body.webhook_url)
    with session_scope() as session:
        lock_tenant(session, tenant_id)
        if idempotency_key:
            existing = _by_idempotency_key(session, tenant_id, idempotency_key, request_sha)
            if existing is not None:
                return existing, False
        model = get_model(session, tenant_id, body.model_id)
        dataset = get_dataset(session, tenant_id, body.dataset_id)
        grid = _check_fit(body, model, dataset)
        check_queued(session, tenant_id)
        # The sweep will need these blobs: held until it is committed, so a reclaim sees it.
        if not all(hold_blob(session, blob) for blob in (model.sha256, dataset.images_blob, dataset.targets_blob)):
            raise Conflict("the model or dataset was deleted while this request ran; submit again with ones "
                           "that exist (GET /v1/models, GET /v1/datasets)")
        evaluation = _queued_evaluation(tenant_id, body, model, dataset, grid, request_sha, idempotency_key)
        session.add(evaluation)
        try:
            session.flush()
            session.add_all(EvaluationTag(evaluation_id=evaluation.id, tag=tag) for tag in dict.fromkeys(body.tags))
            session.flush()
        except IntegrityError:
            # Another request with the same Idempotency-Key won the race.
            session.rollback()
            existing = _by_idempotency_key(session, tenant_id, idempotency_key or "", request_sha)
            if existing is None:
                raise
            return existing, False
        split = partial(chunk_bounds, chunk_images=current_settings().chunk_images)
        planned = jobs.plan_chunks(session, evaluation.id, split)
        session.refresh(evaluation)
    try:
        # The first message carries the evaluation's id: one id everywhere.
        enqueue_evaluation(evaluation.id)
        for index in planned[1:]:
            enqueue_chunk(evaluation.id, index)
    except Exception:  # noqa: BLE001 — the rows are committed; the reconciler re-sends what is missing
        log.exception("could not enqueue evaluation %s; it stays queued", evaluation.id)
    return evaluation, True


def _by_idempotency_key(session: Session, tenant_id: str, key: str, request_sha: str) -> Evaluation | None:
    existing = session.execute(
        select(Evaluation).where(Evaluation.tenant_id == tenant_id, Evaluation.idempotency_key == key)
    ).scalar_one_or_none()
    if existing is not None and existing.request_sha256 != request_sha:
        raise Unprocessable("this Idempotency-Key was already used with a different request body")
    return existing


def get_evaluation(session: Session, tenant_id: str, evaluation_id: str) -> Evaluation:
    evaluation = session.execute(
        select(Evaluation).where(Evaluation.id == evaluation_id, Evaluation.tenant_id == tenant_id)
    ).scalar_one_or_none()
    if evaluation is None:
        raise NotFound(f"no evaluation with id '{evaluation_id}'")
    return evaluation


def list_evaluations(session: Session, tenant_id: str, query: EvaluationFilter):
    stmt = select(Evaluation).where(Evaluation.tenant_id == tenant_id)
    if query.status:
        stmt = stmt.where(Evaluation.status == query.status)
    if query.model_id:
        stmt = stmt.where(Evaluation.model_id == _resolved(get_model, session, tenant_id, query.model_id))
    if query.model_name:
        versions = select(Model.id).where(Model.tenant_id == tenant_id, Model.name == query.model_name)
        stmt = stmt.where(Evaluation.model_id.in_(versions))
    if query.dataset_id:
        stmt = stmt.where(Evaluation.dataset_id == _resolved(get_dataset, session, tenant_id, query.dataset_id))
    if query.sweep_key:
        stmt = stmt.where(Evaluation.sweep_key == query.sweep_key)
    if query.tag:
        stmt = stmt.where(Evaluation.id.in_(select(EvaluationTag.evaluation_id).where(EvaluationTag.tag == query.tag)))
    return paginate(session, stmt, Evaluation, query.limit, query.cursor)


# Clean accuracy at or below this multiple of chance (1 / classes) means the inputs are likely wrong.
NEAR_CHANCE = 1.5


def near_chance_warning(summary: dict[str, Any] | None, num_classes: int) -> list[dict[str, str]]:
    """The `warnings` of an evaluation with this summary on a dataset of `num_classes` classes."""
    clean = (summary or {}).get("clean_accuracy")
    if clean is None or num_classes < 2 or clean > NEAR_CHANCE / num_classes:
        return []
    return [{"code": "clean_accuracy_near_chance", "detail": (
        f"clean accuracy {clean:.4f} is near chance for {num_classes} classes (1/{num_classes} = "
        f"{1 / num_classes:.4f}): the model is probably not seeing its inputs as it was trained to. Check that "
        "the model's mean and std are on the [0, 1] scale (pixels are divided by 255 before (x - mean) / std), "
        "that the channel order matches training (RGB vs BGR), that the images are preprocessed as in "
        "training, and that the dataset's labels mean what the model's outputs mean")}]


def warnings_by_id(session: Session, evaluations: list[Evaluation]) -> dict[str, list[dict[str, str]]]:
    """Each evaluation's warnings, derived at read time from its stored summary and its dataset."""
    finished = [e for e in evaluations if e.status == "succeeded" and e.summary]
    classes = dict(session.execute(
        select(Dataset.id, Dataset.num_classes).where(Dataset.id.in_({e.dataset_id for e in finished}))
    ).all()) if finished else {}
    return {e.id: near_chance_warning(e.summary, classes.get(e.dataset_id, 0)) if e in finished else []
            for e in evaluations}


def _resolved(get, session: Session, tenant_id: str, ref: str) -> str:
    """The id a filter's id-or-name means; an unknown one filters to nothing, as an unknown id always did."""
    try:
        return get(session, tenant_id, ref).id
    except NotFound:
        return ref


def _succeeded(session: Session, tenant_id: str, evaluation_id: str) -> Evaluation:
    evaluation = get_evaluation(session, tenant_id, evaluation_id)
    if evaluation.status != "succeeded":
        raise Conflict(f"evaluation '{evaluation_id}' is {evaluation.status}; results exist once it "
                       "has succeeded")
    return evaluation


def get_succeeded(session: Session, tenant_id: str, evaluation_id: str) -> Evaluation:
    """The evaluation, or a 409 while it has not succeeded."""
    return _succeeded(session, tenant_id, evaluation_id)


Page = tuple[list[dict[str, Any]], str | None]


def shift_results(session: Session, tenant_id: str, evaluation_id: str) -> list[dict[str, Any]]:
    """Every per-shift row in grid order (the CSV, and callers that want the whole table)."""
    return shift_page(session, tenant_id, evaluation_id, None, None)[0]


def shift_page(session: Session, tenant_id: str, evaluation_id: str, limit: int | None, cursor: str | None) -> Page:
    """Per-shift rows in grid order, `limit` from `cursor` on (None: all), and the next cursor."""
    evaluation = _succeeded(session, tenant_id, evaluation_id)
    if is_segmentation(evaluation):
        return segmentation_shift_page(session, evaluation_id, limit, cursor)
    rows, next_cursor = paginate_by_key(
        session, select(ShiftResult).where(ShiftResult.evaluation_id == evaluation_id),
        ShiftResult.position, limit, cursor)
    return [_shift_row(r) for r in rows], next_cursor


def _shift_row(r: ShiftResult) -> dict[str, Any]:
    """A stored row as the API shows it; angle, scale and brightness only for sweeps that have them."""
    row: dict[str, Any] = {"dx": plain(r.dx), "dy": plain(r.dy)}
    if r.angle is not None:
        row.update(angle=plain(r.angle), scale=plain(r.scale), brightness=plain(r.brightness))
    row.update(accuracy=r.correct / r.n, agreement=r.agreed / r.n, correct=r.correct, n=r.n)
    return row


def marginal_page(session: Session, tenant_id: str, evaluation_id: str, limit: int | None,
                  cursor: str | None) -> Page:
    """Accuracy and agreement against each axis the request named, `limit` rows from `cursor` on."""
    evaluation = _succeeded(session, tenant_id, evaluation_id)
    if is_segmentation(evaluation):
        raise Conflict("marginals are for classification sweeps; a segmentation sweep reports per-shift rows")
    stored = session.execute(
        select(ShiftResult).where(ShiftResult.evaluation_id == evaluation_id).order_by(ShiftResult.position)
    ).scalars()
    rows = [{"dx": r.dx, "dy": r.dy, "angle": r.angle, "scale": r.scale, "brightness": r.brightness,
             "correct": r.correct, "agreed": r.agreed, "n": r.n} for r in stored]
    rows = [{key: value for key, value in row.items() if value is not None} for row in rows]
    items = [{**m, "value": plain(m["value"])}
             for m in marginal_rows(rows, build_sweep_grid(evaluation.request).named_axes)]
    numbered = list(enumerate(items))
    page, next_cursor = page_of(numbered, lambda item: item[0], limit, cursor)
    return [item for _, item in page], next_cursor


@dataclass(frozen=True)
class _Names:
    """What the user knows a dataset's classes and samples by, when the upload told."""

    classes: list[str] | None
    files_blob: str | None

    def class_name(self, label: int) -> str | None:
        return self.classes[label] if self.classes is not None and 0 <= label < len(self.classes) else None

    def files(self, session: Session) -> list[str] | None:
        if self.files_blob is None:
            return None
        return json.loads(b"".join(read_blob(session, self.files_blob)))


def _dataset_names(session: Session, evaluation: Evaluation) -> _Names:
    dataset = session.get(Dataset, evaluation.dataset_id)
    if dataset is None:
        return _Names(None, None)
    return _Names(dataset.class_names, dataset.files_blob)


def class_page(session: Session, tenant_id: str, evaluation_id: str, limit: int | None, cursor: str | None) -> Page:
    """Per-class rows by label, `limit` from `cursor` on, and the next cursor."""
    names = _dataset_names(session, _succeeded(session, tenant_id, evaluation_id))
    rows, next_cursor = paginate_by_key(
        session, select(ClassResult).where(ClassResult.evaluation_id == evaluation_id),
        ClassResult.label, limit, cursor)
    return [
        {"label": r.label, "name": names.class_name(r.label), "n": r.n, "clean_accuracy": r.clean_accuracy,
         "mean_accuracy": r.mean_accuracy, "worst_case_accuracy": r.worst_case_accuracy}
        for r in rows
    ], next_cursor


def class_results(session: Session, tenant_id: str, evaluation_id: str) -> list[dict[str, Any]]:
    """Every per-class row by label."""
    return class_page(session, tenant_id, evaluation_id, None, None)[0]


def example_page(session: Session, tenant_id: str, evaluation_id: str, limit: int | None, cursor: str | None) -> Page:
    """The stored fragile samples, most flips first, `limit` from `cursor` on, and the next cursor."""
    names = _dataset_names(session, _succeeded(session, tenant_id, evaluation_id))
    rows, next_cursor = paginate_by_key(
        session, select(ExampleResult).where(ExampleResult.evaluation_id == evaluation_id),
        ExampleResult.rank, limit, cursor)
    files = names.files(session) if rows else None
    return [
        {"index": r.sample_index, "file": files[r.sample_index] if files else None, "label": r.label,
         "class_name": names.class_name(r.label), "clean_prediction": r.clean_prediction,
         "worst_prediction": r.worst_prediction, "worst_shift": [plain(r.worst_dx), plain(r.worst_dy)],
         "worst_transform": _worst_transform(r), "worst_probability": r.worst_probability, "flips": r.flips}
        for r in rows
    ], next_cursor


def _worst_transform(r: ExampleResult) -> dict[str, float]:
    """The worst transform by axis, as the sweep's rows show one: angle, scale and brightness when it has them."""
    transform = {"dx": plain(r.worst_dx), "dy": plain(r.worst_dy)}
    if r.worst_angle is not None:
        transform.update(angle=plain(r.worst_angle), scale=plain(r.worst_scale), brightness=plain(r.worst_brightness))
    return transform


# The CSV of /examples: worst_transform flattened into worst_* columns in its order (angle, scale and
# brightness after worst_dy in sweeps that have them); worst_shift would repeat worst_dx and worst_dy.
EXAMPLE_COLUMNS = ("index", "file", "label", "class_name", "clean_prediction", "worst_prediction", "worst_dx",
                   "worst_dy", "worst_probability", "flips")


def example_table(session: Session, tenant_id: str, evaluation_id: str) -> list[dict[str, Any]]:
    """Every stored fragile sample as one flat row, most flips first."""
    rows, _ = example_page(session, tenant_id, evaluation_id, None, None)
    flat = []
    for row in rows:
        columns: dict[str, Any] = {}
        for key, value in row.items():
            if key == "worst_transform":
                columns.update({f"worst_{axis}": v for axis, v in value.items()})
            elif key != "worst_shift":
                columns[key] = value
        flat.append(columns)
    return flat


def example_results(session: Session, tenant_id: str, evaluation_id: str, limit: int) -> list[dict[str, Any]]:
    """The `limit` most fragile stored samples."""
    return example_page(session, tenant_id, evaluation_id, limit, None)[0]


def cancel_evaluation(session: Session, tenant_id: str, evaluation_id: str) -> Evaluation:
    evaluation = get_evaluation(session, tenant_id, evaluation_id)
    if evaluation.status in jobs.TERMINAL:
        raise Conflict(f"evaluation '{evaluation_id}' has already {evaluation.status}"
                       if evaluation.status != "cancelled" else f"evaluation '{evaluation_id}' is already cancelled")
    jobs.request_cancel(session, evaluation)
    return evaluation
