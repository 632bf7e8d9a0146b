"""Pictures of a tenant's results: fetch the rows, name them, hand them to api.services.drawing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from api.services.curves import curves_png
from api.http.errors import Conflict, NotFound, Unprocessable
from api.http.schemas import CompareQuery, ExampleViewQuery, HeatmapQuery, SampleQuery
from api.services import drawing
from api.services.datasets import get_dataset
from api.services.evaluations import get_evaluation, marginal_page, shift_results
from db.datasets import stored_image
from db.models import Dataset, Evaluation, Model
from core.grid import AXES, IDENTITY_VALUES, GridError, Transform, build_sweep_grid, check_grid_fits
from core.views import to_uint8, transformed_view


def _names(session: Session, evaluation: Evaluation) -> tuple[str, str]:
    model = session.get(Model, evaluation.model_id)
    dataset = session.get(Dataset, evaluation.dataset_id)
    return (model.name if model else evaluation.model_id, dataset.name if dataset else evaluation.dataset_id)


def _sweep_line(evaluation: Evaluation) -> str:
    summary = evaluation.summary or {}
    request = evaluation.request
    parts = [f"padding {request.get('padding')}", f"{summary.get('num_samples')} samples",
             f"{summary.get('num_shifts')} transforms" if any(request.get(a) for a in ("angle", "scale", "brightness"))
             else f"{summary.get('num_shifts')} shifts"]
    if summary.get("mean_accuracy") is not None:
        parts.append(f"mean accuracy {summary['mean_accuracy'] * 100:.1f}%")
    if summary.get("consistency") is not None:
        parts.append(f"consistency {summary['consistency'] * 100:.1f}%")
    return " · ".join(parts)


def heatmap(session: Session, tenant_id: str, evaluation_id: str, query: HeatmapQuery) -> bytes:
    """The evaluation's accuracy (or agreement, or both) over two of its axes as a PNG."""
    rows = shift_results(session, tenant_id, evaluation_id)
    evaluation = get_evaluation(session, tenant_id, evaluation_id)
    if evaluation.request.get("early_exit"):
        raise Unprocessable("an early_exit evaluation measures the worst case only: it has no per-shift "
                            "accuracy to draw; run it without early_exit for a heatmap")
    model, dataset = _names(session, evaluation)
    metrics = ["accuracy", "agreement"] if query.metric == "both" else [query.metric]
    fixed = {axis: getattr(query, f"at_{axis}") for axis in ("angle", "scale", "brightness")}
    projected = project(rows, (query.x, query.y), {a: v for a, v in fixed.items() if v is not None})
    if not projected:
        raise Unprocessable("no row of this sweep has the values asked for with at_angle, at_scale or at_brightness")
    subtitle = " · ".join([_sweep_line(evaluation)] + [f"{a} {v:g}" for a, v in fixed.items() if v is not None])
    return drawing.heatmap_png(projected, metrics, title=f"{model} on {dataset}", subtitle=subtitle,
                               full_scale=query.scale == "full", axes=(query.x, query.y))


def project(rows: list[dict[str, Any]], axes: tuple[str, str], fixed: dict[str, float]) -> list[dict[str, Any]]:
    """Rows with the `fixed` values, pooled by their values on `axes` (as `dx`, `dy` keys for the heatmap).

    A pooled cell is the mean of its rows' accuracy and agreement (every row of a sweep has the
    same n, so this is the accuracy over all its image-transform pairs); a cell of one row keeps
    that row's values exactly.
    """
    pooled: dict[tuple[float, ...], list[dict[str, Any]]] = {}
    for row in rows:
        if all(abs(float(row.get(a, IDENTITY_VALUES[a])) - v) <= 1e-9 for a, v in fixed.items()):
            pooled.setdefault(tuple(float(row.get(a, IDENTITY_VALUES[a])) for a in axes), []).append(row)
    return [{"dx": x, "dy": y, **{m: _mean([r.get(m) for r in group]) for m in ("accuracy", "agreement")}}
            for (x, y), group in pooled.items()]


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def curves(session: Session, tenant_id: str, evaluation_id: str) -> bytes:
    """Accuracy and agreement against each axis the evaluation named, as a PNG."""
    rows, _ = marginal_page(session, tenant_id, evaluation_id, None, None)
    evaluation = get_evaluation(session, tenant_id, evaluation_id)
    model, dataset = _names(session, evaluation)
    return curves_png(rows, title=f"{model} on {dataset}", subtitle=_sweep_line(evaluation))


def comparison(session: Session, tenant_id: str, evaluation_id: str, query: CompareQuery) -> bytes:
    """Two evaluations' heatmaps on one scale, and the difference per shift, as a PNG."""
    rows = shift_results(session, tenant_id, evaluation_id)
    other_rows = shift_results(session, tenant_id, query.other)
    first = get_evaluation(session, tenant_id, evaluation_id)
    second = get_evaluation(session, tenant_id, query.other)
    (model_a, dataset_a), (model_b, dataset_b) = _names(session, first), _names(session, second)
    label_a, label_b = model_a, model_b
    if model_a == model_b:
        label_a, label_b = f"{model_a} ({first.id[:8]})", f"{model_b} ({second.id[:8]})"
    datasets = dataset_a if dataset_a == dataset_b else f"{dataset_a} / {dataset_b}"
    same_sweep = "same sweep" if first.sweep_key == second.sweep_key else "different sweeps"
    try:
        return drawing.comparison_png(
            rows, other_rows, query.metric, labels=(label_a, label_b),
            title=f"{query.metric}: {label_a} vs {label_b}",
            subtitle=f"{datasets} · {same_sweep} · padding {first.request.get('padding')} vs "
                     f"{second.request.get('padding')}",
            full_scale=query.scale == "full",
        )
    except ValueError as exc:
        raise Unprocessable(str(exc)) from None


def _image(session: Session, dataset: Dataset, index: int) -> np.ndarray:
    if not 0 <= index < dataset.num_samples:
        raise NotFound(f"dataset '{dataset.id}' has samples 0 to {dataset.num_samples - 1}; there is no {index}")
    # One image's bytes from its chunk rows: the API never copies a dataset of GBs to show one picture.
    return stored_image(session, dataset.images_blob, index)


def sample(session: Session, tenant_id: str, dataset_id: str, index: int, query: SampleQuery) -> bytes:
    """Image `index` of a dataset the tenant can see, as a PNG."""
    dataset = get_dataset(session, tenant_id, dataset_id)
    if dataset.status != "ready":
        raise Conflict(f"dataset '{dataset.id}' is {dataset.status}; its images exist once it is ready")
    return drawing.sample_png(_image(session, dataset, index), query.scale)


@dataclass(frozen=True)
class SweepGeometry:
    """What decides how an evaluation's model saw a sample under a transform."""

    padding: str
    fill: float
    image_hw: tuple[int, int]
    input_hw: tuple[int, int]

    @classmethod
    def of(cls, session: Session, evaluation: Evaluation) -> "SweepGeometry":
        model, dataset = session.get(Model, evaluation.model_id), session.get(Dataset, evaluation.dataset_id)
        return cls(evaluation.request["padding"], float(evaluation.request["fill"]),
                   (dataset.height, dataset.width), (model.input_spec["height"], model.input_spec["width"]))

    def png(self, image: np.ndarray, transform: Transform, zoom: int) -> bytes:
        """The image under a transform before normalization, rounded to 0–255, as a PNG; 422 if it cannot apply."""
        dx, dy = transform[:2]
        # Only the axes away from their identity, so `crop` takes angle 0 and scale 1 (its sweeps do).
        axes = {name: {"list": [value]} for name, value in zip(AXES, transform[2:]) if value != IDENTITY_VALUES[name]}
        try:
            check_grid_fits(build_sweep_grid({"shifts": {"list": [[dx, dy]]}, **axes}), self.padding,
                            self.image_hw, self.input_hw)
        except GridError as exc:
            # `crop` refuses any rotation or scale; every other refusal is about the shift.
            geometric = [name for name in axes if name in ("angle", "scale")]
            field = geometric[0] if self.padding == "crop" and geometric else "dx"
            raise Unprocessable(f"{exc}; choose a transform the sweep could take",
                                errors=[{"field": field, "message": str(exc)}]) from None
        view = transformed_view(image, transform, self.padding, self.fill, self.input_hw)
        return drawing.sample_png(to_uint8(view), zoom)


def example_view(session: Session, tenant_id: str, evaluation_id: str, index: int, query: ExampleViewQuery) -> bytes:
    """Sample `index` of an evaluation's dataset as its model saw it under the query's transform, as a PNG."""
    evaluation = get_evaluation(session, tenant_id, evaluation_id)
    geometry = SweepGeometry.of(session, evaluation)
    return geometry.png(_image(session, session.get(Dataset, evaluation.dataset_id), index), query.transform,
                        query.zoom)
