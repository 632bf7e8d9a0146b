"""Query and response schemas of the pictures, leaderboard and dataset-sample routes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from api.responses import Summary
from api.schemas import Strict

SummaryMetric = Literal["consistency", "clean_accuracy", "mean_accuracy", "worst_case_accuracy", "flip_rate"]


AxisName = Literal["dx", "dy", "angle", "scale", "brightness"]


class HeatmapQuery(Strict):
    """GET /v1/evaluations/{id}/heatmap.png: `both` draws accuracy and agreement side by side.

    `x` and `y` pick the two axes (dx and dy by default); `at_angle`, `at_scale`, `at_brightness`
    keep only the rows with that value, and each cell is the mean over the rows that remain.
    """

    metric: Literal["accuracy", "agreement", "both"] = "accuracy"
    scale: Literal["auto", "full"] = Field(default="auto", description="the colour scale: the data's range or 0-100%")
    x: AxisName = "dx"
    y: AxisName = "dy"
    at_angle: float | None = None
    at_scale: float | None = None
    at_brightness: float | None = None


class CurvesQuery(Strict):
    """GET /v1/evaluations/{id}/curves.png: accuracy and agreement against each axis the sweep named."""


class CompareQuery(Strict):
    """GET /v1/evaluations/{id}/compare.png: this evaluation, `other`, and other minus this."""

    other: str = Field(min_length=1, max_length=64)
    metric: Literal["accuracy", "agreement"] = "accuracy"
    scale: Literal["auto", "full"] = "auto"


class SampleQuery(Strict):
    """GET /v1/datasets/{id}/samples/{index}.png: `scale` enlarges each pixel to a square."""

    scale: int = Field(default=1, ge=1, le=32)


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
    sweep: dict[str, Any]  # shifts, padding, fill, max_samples, seed; angle, scale, brightness when named
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
