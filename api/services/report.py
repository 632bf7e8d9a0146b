"""An evaluation's report: one self-contained HTML page (pictures inline, nothing fetched) a person can forward."""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from typing import Any

from flask import render_template
from sqlalchemy.orm import Session

from api.http.schemas import HeatmapQuery
from api.http.serializers import dataset_json, iso, model_json
from api.services import pictures as picture_service
from api.services.pictures import SweepGeometry
from api.services.evaluations import class_results, example_results, get_succeeded, marginal_page, warnings_by_id
from api.services.layers import is_segmentation
from core.grid import AXES, IDENTITY, Transform, transform_of
from db.datasets import stored_image
from db.models import Dataset, Evaluation, Model

# Fragile samples shown as pictures; each is a few hundred bytes for small images.
REPORT_EXAMPLES = 24
SAMPLE_SCALE = 8
METRICS = (("clean_accuracy", "Clean accuracy"), ("mean_accuracy", "Mean accuracy"),
           ("worst_case_accuracy", "Worst-case accuracy"), ("consistency", "Consistency"),
           ("flip_rate", "Flip rate"))


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def transform_text(transform: dict[str, float]) -> str:
    """A worst transform in words: "(dx, dy)", then its angle, scale and brightness where they move the image."""
    parts = [f"({transform['dx']}, {transform['dy']})"]
    if transform.get("angle", 0) != 0:
        parts.append(f"{transform['angle']}°")
    if transform.get("scale", 1) != 1:
        parts.append(f"×{transform['scale']}")
    if transform.get("brightness", 0) != 0:
        parts.append(f"brightness {transform['brightness']:+}")
    return ", ".join(parts)


def _samples(session: Session, evaluation: Evaluation, dataset: Dataset | None,
             examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each sample as the model saw it: untransformed, and under its whole worst transform."""
    examples = [{**example, "worst_text": transform_text(example["worst_transform"])} for example in examples]
    if dataset is None or not examples:
        return examples
    geometry = SweepGeometry.of(session, evaluation)
    zoom = max(1, min(SAMPLE_SCALE, 64 // max(geometry.input_hw)))

    def picture(example: dict[str, Any], transform: Transform) -> str:
        return data_uri(geometry.png(stored_image(session, dataset.images_blob, example["index"]), transform, zoom))

    return [{**example, "picture": picture(example, IDENTITY),
             "worst_picture": picture(example, transform_of(example["worst_transform"]))}
            for example in examples]


def _curves(session: Session, tenant_id: str, evaluation: Evaluation) -> dict[str, Any] | None:
    """The marginals beside translation as GET …/curves.png draws them, and their rows; None for a shift sweep."""
    if not any(evaluation.request.get(axis) for axis in AXES):
        return None
    rows, _ = marginal_page(session, tenant_id, evaluation.id, None, None)
    return {"picture": data_uri(picture_service.curves(session, tenant_id, evaluation.id)), "rows": rows}


def evaluation_report(session: Session, tenant_id: str, evaluation_id: str) -> str:
    """The report of a succeeded evaluation as one HTML document."""
    evaluation = get_succeeded(session, tenant_id, evaluation_id)
    model, dataset = session.get(Model, evaluation.model_id), session.get(Dataset, evaluation.dataset_id)
    model_name = f"{model.name} v{model.version}" if model else evaluation.model_id
    dataset_name = dataset.name if dataset else evaluation.dataset_id
    segmentation = is_segmentation(evaluation)
    # The same picture as GET …/heatmap.png?metric=both (accuracy alone for segmentation).
    heatmap = None if evaluation.request.get("early_exit") else picture_service.heatmap(
        session, tenant_id, evaluation_id, HeatmapQuery(metric="accuracy" if segmentation else "both"))
    summary = evaluation.summary or {}
    return render_template(
        "report/evaluation.html",
        evaluation=evaluation, created=iso(evaluation.created_at), finished=iso(evaluation.finished_at),
        model=model_json(model) if model else None, dataset=dataset_json(dataset) if dataset else None,
        model_name=model_name, dataset_name=dataset_name,
        metrics=[(label, summary.get(key)) for key, label in METRICS],
        summary=summary, warnings=warnings_by_id(session, [evaluation])[evaluation.id],
        sweep={key: evaluation.request.get(key)
               for key in ("shifts", *AXES, "padding", "fill", "max_samples", "seed")},
        heatmap=data_uri(heatmap) if heatmap else None,
        curves=_curves(session, tenant_id, evaluation),
        classes=[] if segmentation else class_results(session, tenant_id, evaluation_id),
        examples=[] if segmentation else _samples(session, evaluation, dataset, example_results(
            session, tenant_id, evaluation_id, REPORT_EXAMPLES)),
        generated=datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
    )
