"""Prometheus metrics computed from the database and the broker at scrape time.

Derived from shared state rather than kept in process memory, so every gunicorn worker
answers a scrape with the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.celery_app import QUEUE
from core.queue import queue_depth
from db.models import Evaluation, Model
from db.session import session_scope

EVALUATION_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
MODEL_STATUSES = ("validating", "ready", "invalid")
THROUGHPUT_WINDOW_S = 300


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)  # SQLite hands back naive UTC


def images_per_second(spans: list[tuple[datetime, datetime | None, int]], now: datetime,
                      window_s: float = THROUGHPUT_WINDOW_S) -> float:
    """Images swept per second over the last `window_s`, spreading each sweep's images evenly over its run.

    A span is (started_at, finished_at or None while running, images done).
    """
    window_start = now - timedelta(seconds=window_s)
    total = 0.0
    for started, finished, done in spans:
        start, end = _aware(started), _aware(finished) if finished else now
        length = (end - start).total_seconds()
        overlap = (min(end, now) - max(start, window_start)).total_seconds()
        if done <= 0 or overlap <= 0:
            continue
        total += done if length <= 0 else done * min(1.0, overlap / length)
    return total / window_s


def _counts(session: Session, column: Any, statuses: tuple[str, ...]) -> dict[str, int]:
    rows = dict(session.execute(select(column, func.count()).group_by(column)).all())
    return {status: int(rows.get(status, 0)) for status in statuses}


def _queue_depth() -> int | None:
    """Tasks waiting in the work queue, or None when the broker is unreachable."""
    try:
        return queue_depth()
    except Exception:  # noqa: BLE001 — reported as shiftscore_broker_up 0
        return None


class _Collector:
    """Reads the current numbers on every scrape."""

    def collect(self) -> Iterator[Metric]:
        now = datetime.now(timezone.utc)
        cutoff = now - timedelta(seconds=THROUGHPUT_WINDOW_S)
        with session_scope() as session:
            evaluations = _counts(session, Evaluation.status, EVALUATION_STATUSES)
            models = _counts(session, Model.status, MODEL_STATUSES)
            images = session.execute(select(func.coalesce(func.sum(Evaluation.progress_done), 0))).scalar_one()
            spans = session.execute(
                select(Evaluation.started_at, Evaluation.finished_at, Evaluation.progress_done).where(
                    Evaluation.started_at.is_not(None),
                    (Evaluation.finished_at.is_(None) & (Evaluation.status == "running"))
                    | (Evaluation.finished_at >= cutoff),
                )
            ).all()
        family = GaugeMetricFamily("shiftscore_evaluations", "Evaluations by status.", labels=["status"])
        for status, count in evaluations.items():
            family.add_metric([status], count)
        yield family
        family = GaugeMetricFamily("shiftscore_models", "Uploaded models by validation status.", labels=["status"])
        for status, count in models.items():
            family.add_metric([status], count)
        yield family
        yield CounterMetricFamily(
            "shiftscore_images_evaluated", "Shifted images run through a model, over all sweeps.", value=int(images)
        )
        yield GaugeMetricFamily(
            "shiftscore_sweep_images_per_second",
            f"Sweep throughput: images evaluated per second over the last {THROUGHPUT_WINDOW_S} s.",
            value=images_per_second([tuple(row) for row in spans], now),
        )
        depth = _queue_depth()
        yield GaugeMetricFamily("shiftscore_broker_up", "1 if the broker answered this scrape.",
                                value=0 if depth is None else 1)
        if depth is not None:
            family = GaugeMetricFamily("shiftscore_queue_depth", "Tasks waiting in the broker queue.",
                                       labels=["queue"])
            family.add_metric([QUEUE], depth)
            yield family


def exposition() -> bytes:
    """The metrics in Prometheus' text exposition format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    return generate_latest(registry)
