"""Rows to JSON, in the shapes the README's REST API section documents."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from db.models import Dataset, Evaluation, Model


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite hands back naive UTC
        value = value.replace(tzinfo=timezone.utc)
    return value.isoformat().replace("+00:00", "Z")


def dataset_json(dataset: Dataset) -> dict[str, Any]:
    return {
        "id": dataset.id,
        "name": dataset.name,
        "builtin": dataset.builtin,
        "task": dataset.task,
        "status": dataset.status,
        "error": dataset.error,
        "preprocess": dataset.preprocess,
        "num_samples": dataset.num_samples,
        "channels": dataset.channels,
        "height": dataset.height,
        "width": dataset.width,
        "num_classes": dataset.num_classes,
        "classes": dataset.class_names,
        "sha256": dataset.sha256,
        "created_at": iso(dataset.created_at),
    }


def model_json(model: Model) -> dict[str, Any]:
    return {
        "id": model.id,
        "name": model.name,
        "version": model.version,
        "format": model.format,
        "task": model.task,
        "architecture": model.architecture,
        "architecture_options": model.architecture_options,
        "sha256": model.sha256,
        "status": model.status,
        "error": model.error,
        "num_parameters": model.num_parameters,
        "num_outputs": model.num_outputs,
        "input": model.input_spec,
        "created_at": iso(model.created_at),
    }


def evaluation_json(evaluation: Evaluation, warnings: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """The evaluation resource; `warnings` come from api.services.evaluations.warnings_by_id."""
    error = None
    if evaluation.error_type:
        error = {"type": evaluation.error_type, "detail": evaluation.error_detail}
    return {
        "id": evaluation.id,
        "status": evaluation.status,
        "model_id": evaluation.model_id,
        "dataset_id": evaluation.dataset_id,
        "progress": {"done": evaluation.progress_done, "total": evaluation.progress_total},
        "attempts": evaluation.attempts,
        "created_at": iso(evaluation.created_at),
        "started_at": iso(evaluation.started_at),
        "finished_at": iso(evaluation.finished_at),
        "error": error,
        "request": evaluation.request,
        "sweep_key": evaluation.sweep_key,
        "tags": evaluation.tags,
        "summary": evaluation.summary if evaluation.status == "succeeded" else None,
        "warnings": warnings or [],
    }
