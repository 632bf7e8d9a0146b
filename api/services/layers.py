"""Layer profiles and segmentation sweeps at the API (docs/equivariance.md): what can be asked for, and the results."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.http.errors import Conflict, NotFound, Unprocessable
from api.http.pagination import page_of, paginate_by_key
from core.grid import plain
from db.models import Dataset, Evaluation, LayerResult, Model, SegmentationResult

# Formats whose intermediate outputs the worker can reach (forward hooks, torch.export graphs).
PROFILED_FORMATS = ("state_dict", "exported")


def check_layers_request(layers: bool | list[str] | None, model: Model) -> None:
    """A 422 when a layer profile is asked of a model whose layers cannot be reached."""
    if not layers or model.format in PROFILED_FORMATS:
        return
    raise Unprocessable(
        f"a layer profile needs the model's intermediate outputs, which a '{model.format}' model does not "
        "expose; upload it as 'state_dict' with a registry architecture or as 'exported' (torch.export .pt2), "
        "or leave out 'layers'",
        errors=[{"field": "layers", "message": f"not available for format '{model.format}'"}],
    )


def check_task(model: Model, dataset: Dataset) -> None:
    """A 422 unless a classifier meets labels, or a segmentation model meets masks."""
    if model.task == dataset.task:
        return
    holds = {"classification": "labels", "segmentation": "masks"}
    raise Unprocessable(
        f"the model is a {model.task} model but the dataset holds {holds.get(dataset.task, dataset.task)} "
        f"({dataset.task}); evaluate a {model.task} model on a dataset with "
        f"{holds.get(model.task, model.task)}"
    )


def is_segmentation(evaluation: Evaluation) -> bool:
    return (evaluation.summary or {}).get("task") == "segmentation"


def segmentation_shift_page(session: Session, evaluation_id: str, limit: int | None,
                            cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """Per-shift rows of a segmentation sweep (pixels for n, then the dense metrics), a page at a time."""
    rows, next_cursor = paginate_by_key(
        session, select(SegmentationResult).where(SegmentationResult.evaluation_id == evaluation_id),
        SegmentationResult.position, limit, cursor)
    return [
        {
            "dx": plain(r.dx), "dy": plain(r.dy),
            "accuracy": r.correct / r.pixels if r.pixels else None,
            "agreement": r.agreed / r.cells if r.cells else None,
            "correct": r.correct, "n": r.pixels,
            "pixel_agreement": r.agreed / r.cells if r.cells else None,
            "equivariance_error": r.equivariance_error,
            "miou": r.miou,
            "samples": r.n, "cells": r.cells,
        }
        for r in rows
    ], next_cursor


def layer_profile(session: Session, tenant_id: str, evaluation_id: str, limit: int | None = None,
                  cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """The layer profile in forward order, the model output last, each with its per-shift errors; a page of it."""
    evaluation = session.execute(
        select(Evaluation).where(Evaluation.id == evaluation_id, Evaluation.tenant_id == tenant_id)
    ).scalar_one_or_none()
    if evaluation is None:
        raise NotFound(f"no evaluation with id '{evaluation_id}'")
    if not evaluation.request.get("layers"):
        raise NotFound(
            f"evaluation '{evaluation_id}' has no layer profile; submit an evaluation with \"layers\": true "
            "(or a list of layer names) to get one"
        )
    if evaluation.status != "succeeded":
        raise Conflict(f"evaluation '{evaluation_id}' is {evaluation.status}; the layer profile exists once "
                       "it has succeeded")
    results = session.execute(
        select(LayerResult).where(LayerResult.evaluation_id == evaluation_id)
        .order_by(LayerResult.layer_position, LayerResult.shift_position)
    ).scalars()
    layers: list[dict[str, Any]] = []
    for r in results:
        if not layers or layers[-1]["position"] != r.layer_position:
            layers.append({"position": r.layer_position, "name": r.layer, "kind": r.kind,
                           "shape": r.shape, "factor": r.factor, "shifts": []})
        layers[-1]["shifts"].append({
            "dx": plain(r.dx), "dy": plain(r.dy),
            "equivariance_error": r.equivariance_error, "invariance_error": r.invariance_error,
        })
    layers, next_cursor = page_of(layers, lambda layer: layer["position"], limit, cursor)
    for layer in layers:
        del layer["position"]
        layer["mean_equivariance_error"] = _mean(s["equivariance_error"] for s in layer["shifts"])
        layer["mean_invariance_error"] = _mean(s["invariance_error"] for s in layer["shifts"])
    return layers, next_cursor


def _mean(values: Any) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None
