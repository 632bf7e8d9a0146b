"""Rows to JSON, in the shapes the README's REST API section documents.

The field list of each resource is its response schema's (api.http.responses), so the
JSON and the OpenAPI document cannot name different fields.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel

from api.http import responses
from db.models import Dataset, Evaluation, Model


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite hands back naive UTC
        value = value.replace(tzinfo=timezone.utc)
    return value.isoformat().replace("+00:00", "Z")


def shaped(schema: type[BaseModel], row: Any, **values: Any) -> dict[str, Any]:
    """`schema`'s fields in its order, each from `values` or else the row's attribute of that name; times in ISO 8601."""
    out = {}
    for name in schema.model_fields:
        value = values[name] if name in values else getattr(row, name)
        out[name] = iso(value) if isinstance(value, datetime) else value
    return out


def dataset_json(dataset: Dataset) -> dict[str, Any]:
    return shaped(responses.Dataset, dataset)


def model_json(model: Model) -> dict[str, Any]:
    return shaped(responses.Model, model, input=model.input_spec)


def evaluation_json(evaluation: Evaluation, warnings: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """The evaluation resource; `warnings` come from api.services.evaluations.warnings_by_id."""
    error = None
    if evaluation.error_type:
        error = {"type": evaluation.error_type, "detail": evaluation.error_detail}
    return shaped(
        responses.Evaluation, evaluation, error=error, warnings=warnings or [],
        progress={"done": evaluation.progress_done, "total": evaluation.progress_total},
        summary=evaluation.summary if evaluation.status == "succeeded" else None,
    )
