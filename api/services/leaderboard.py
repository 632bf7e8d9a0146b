"""The leaderboard: models ranked by their latest succeeded evaluation, per dataset and sweep."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.http.responses import LeaderboardEntry
from api.http.schemas import LeaderboardQuery
from api.http.serializers import iso, shaped
from api.services.datasets import get_dataset
from api.services.sweeps import SWEEP_FIELDS, TRANSFORM_FIELDS
from db.models import Evaluation, Model

# flip_rate counts changes, so fewer is better; every other summary metric is a rate of success.
LOWER_IS_BETTER = {"flip_rate"}


@dataclass(frozen=True)
class Finished:
    """One succeeded evaluation, as much of it as the ranking needs."""

    evaluation_id: str
    model_id: str
    model_name: str
    sweep_key: str
    request: dict[str, Any]
    summary: dict[str, Any]
    finished_at: datetime
    model_version: int = 1


def _entry(item: Finished, metric: str, rank: int | None) -> dict[str, Any]:
    return shaped(LeaderboardEntry, item, rank=rank, value=item.summary.get(metric))


def rank_sweep(latest: list[Finished], metric: str) -> list[dict[str, Any]]:
    """Entries best first; ties share a rank (1, 2, 2, 4); a model without the metric comes last, unranked."""
    scored = [item for item in latest if item.summary.get(metric) is not None]
    unscored = [item for item in latest if item.summary.get(metric) is None]
    sign = 1.0 if metric in LOWER_IS_BETTER else -1.0
    scored.sort(key=lambda item: (sign * item.summary[metric], item.model_name, item.model_id))
    entries: list[dict[str, Any]] = []
    for position, item in enumerate(scored, start=1):
        tied = entries and entries[-1]["value"] == item.summary[metric]
        entries.append(_entry(item, metric, entries[-1]["rank"] if tied else position))
    unscored.sort(key=lambda item: (item.model_name, item.model_id))
    return entries + [_entry(item, metric, None) for item in unscored]


def build_leaderboard(finished: list[Finished], metric: str) -> list[dict[str, Any]]:
    """One ranking per sweep, the most recently active sweep first; each model's latest evaluation counts."""
    newest_first = sorted(finished, key=lambda item: (item.finished_at, item.evaluation_id), reverse=True)
    latest: dict[str, dict[str, Finished]] = {}
    for item in newest_first:
        latest.setdefault(item.sweep_key, {}).setdefault(item.model_id, item)
    sweeps = []
    for sweep_key, by_model in latest.items():
        newest = next(iter(by_model.values()))
        sweeps.append({
            "sweep_key": sweep_key,
            "sweep": {name: newest.request.get(name) for name in SWEEP_FIELDS}
            | {name: newest.request[name] for name in TRANSFORM_FIELDS if newest.request.get(name) is not None},
            "num_samples": newest.summary.get("num_samples"),
            "num_shifts": newest.summary.get("num_shifts"),
            "latest_finished_at": iso(newest.finished_at),
            "items": rank_sweep(list(by_model.values()), metric),
        })
    return sweeps


def leaderboard(session: Session, tenant_id: str, query: LeaderboardQuery) -> dict[str, Any]:
    """The tenant's leaderboard for a dataset (its id, or a built-in's name)."""
    dataset = get_dataset(session, tenant_id, query.dataset_id)
    stmt = (
        select(Evaluation, Model.name, Model.version)
        .join(Model, Model.id == Evaluation.model_id)
        .where(Evaluation.tenant_id == tenant_id, Evaluation.dataset_id == dataset.id,
               Evaluation.status == "succeeded", Model.deleted_at.is_(None))
    )
    if query.sweep_key:
        stmt = stmt.where(Evaluation.sweep_key == query.sweep_key)
    finished = [
        Finished(evaluation.id, evaluation.model_id, name, evaluation.sweep_key, evaluation.request,
                 evaluation.summary or {}, evaluation.finished_at, version)
        for evaluation, name, version in session.execute(stmt)
    ]
    return {
        "dataset_id": dataset.id,
        "dataset_name": dataset.name,
        "metric": query.metric,
        "higher_is_better": query.metric not in LOWER_IS_BETTER,
        "sweeps": build_leaderboard(finished, query.metric),
    }
