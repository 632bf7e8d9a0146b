"""An evaluation's report: one self-contained HTML page (pictures inline, nothing fetched) a person can forward."""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from typing import Any

import numpy as np
from flask import render_template
from sqlalchemy.orm import Session

from api.http.schemas import HeatmapQuery
from api.http.serializers import dataset_json, iso, model_json
from api.http.settings import current_settings
from api.services import drawing
from api.services import pictures as picture_service
from api.services.pictures import SweepGeometry
from api.services.evaluations import class_results, example_results, get_succeeded, warnings_by_id
from api.services.layers import is_segmentation
from db.blobs import blob_path
from db.models import Dataset, Evaluation, Model

# Fragile samples shown as pictures; each is a few hundred bytes for small images.
REPORT_EXAMPLES = 24
SAMPLE_SCALE = 8
METRICS = (("clean_accuracy", "Clean accuracy"), ("mean_accuracy", "Mean accuracy"),
           ("worst_case_accuracy", "Worst-case accuracy"), ("consistency", "Consistency"),
           ("flip_rate", "Flip rate"))


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _samples(session: Session, evaluation: Evaluation, dataset: Dataset | None,
             examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each sample as the model saw it: unshifted, and at its worst shift."""
    if dataset is None or not examples:
        return examples
    images = np.load(blob_path(session, dataset.images_blob, current_settings().cache_dir), mmap_mode="r")
    geometry = SweepGeometry.of(session, evaluation)
    zoom = max(1, min(SAMPLE_SCALE, 64 // max(geometry.input_hw)))

    def picture(example: dict[str, Any], dx: float, dy: float) -> str:
        return data_uri(geometry.png(np.asarray(images[example["index"]]), dx, dy, zoom))

    return [{**example, "picture": picture(example, 0, 0), "worst_picture": picture(example, *example["worst_shift"])}
            for example in examples]


def evaluation_report(session: Session, tenant_id: str, evaluation_id: str) -> str:
    """The report of a succeeded evaluation as one HTML document."""
    evaluation = get_succeeded(session, tenant_id, evaluation_id)
    model, dataset = session.get(Model, evaluation.model_id), session.get(Dataset, evaluation.dataset_id)
    model_name = f"{model.name} v{model.version}" if model else evaluation.model_id
    dataset_name = dataset.name if dataset else evaluation.dataset_id
    segmentation = is_segmentation(evaluation)
    # The same picture as GET …/heatmap.png?metric=both (accuracy alone for segmentation).
    heatmap = picture_service.heatmap(session, tenant_id, evaluation_id,
                                      HeatmapQuery(metric="accuracy" if segmentation else "both"))
    summary = evaluation.summary or {}
    return render_template(
        "report/evaluation.html",
        evaluation=evaluation, created=iso(evaluation.created_at), finished=iso(evaluation.finished_at),
        model=model_json(model) if model else None, dataset=dataset_json(dataset) if dataset else None,
        model_name=model_name, dataset_name=dataset_name,
        metrics=[(label, summary.get(key)) for key, label in METRICS],
        summary=summary, warnings=warnings_by_id(session, [evaluation])[evaluation.id],
        sweep={key: evaluation.request.get(key) for key in ("shifts", "padding", "fill", "max_samples", "seed")},
        heatmap=data_uri(heatmap),
        classes=[] if segmentation else class_results(session, tenant_id, evaluation_id),
        examples=[] if segmentation else _samples(session, evaluation, dataset, example_results(
            session, tenant_id, evaluation_id, REPORT_EXAMPLES)),
        generated=datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
    )
