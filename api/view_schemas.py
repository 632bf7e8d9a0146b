"""Query and response schemas of the pictures, leaderboard and dataset-sample routes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from api.responses import Summary
from api.schemas import Strict

SummaryMetric = Literal["consistency", "clean_accuracy", "mean_accuracy", "worst_case_accuracy", "flip_rate"]


class HeatmapQuery(Strict):
    """GET /v1/evaluations/{id}/heatmap.png: `both` draws accuracy and agreement side by side."""

    metric: Literal["accuracy", "agreement", "both"] = "accuracy"
    scale: Literal["auto", "full"] = "auto"


class CompareQuery(Strict):
    """GET /v1/evaluations/{id}/compare.png: this evaluation, `other`, and other minus this."""

    other: str = Field(min_length=1, max_length=64)
    metric: Literal["accuracy", "agreement"] = "accuracy"
    scale: Literal["auto", "full"] = "auto"


class SampleQuery(Strict):
    """GET /v1/datasets/{id}/samples/{index}.png: `scale` enlarges each pixel to a square."""

    scale: int = Field(default=1, ge=1, le=32)


class ExampleViewQuery(Strict):
    """GET /v1/evaluations/{id}/examples/{index}.png: one sample as the model saw it under a transform.

    Each axis of the transform is one query parameter, absent meaning the identity, so an
    axis added later is one more field here. `zoom` only enlarges the picture (hard pixels).
    """

    dx: float = Field(default=0.0, ge=-10_000, le=10_000, allow_inf_nan=False, description="move right by dx pixels")
    dy: float = Field(default=0.0, ge=-10_000, le=10_000, allow_inf_nan=False, description="move down by dy pixels")
    zoom: int = Field(default=1, ge=1, le=32, description="draw each pixel as a zoom×zoom square")


class LeaderboardQuery(Strict):
    """GET /v1/leaderboard: one ranking per sweep of the dataset, or only the sweep `sweep_key`."""

    dataset_id: str = Field(min_length=1, max_length=200, description="a dataset's id, or its name")
    metric: SummaryMetric = "consistency"
    sweep_key: str | None = Field(default=None, min_length=1, max_length=64)


class LeaderboardEntry(BaseModel):
    rank: int | None  # null when the evaluation has no value for the metric (flip_rate of a list)
    model_id: str
    model_name: str
    model_version: int
    evaluation_id: str
    value: float | None
    summary: Summary
    finished_at: str


class SweepRanking(BaseModel):
    sweep_key: str
    sweep: dict[str, Any]  # shifts, padding, fill, max_samples, seed
    num_samples: int
    num_shifts: int
    latest_finished_at: str
    items: list[LeaderboardEntry]


class Leaderboard(BaseModel):
    dataset_id: str
    dataset_name: str
    metric: SummaryMetric
    higher_is_better: bool
    sweeps: list[SweepRanking]
