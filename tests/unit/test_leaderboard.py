"""Leaderboard ranking and the throughput gauge, on plain rows."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from api.services.leaderboard import Finished, build_leaderboard, rank_sweep
from api.services.metrics import images_per_second

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def finished(model: str, minute: int, sweep: str = "s1", **summary: float | None) -> Finished:
    values = {"consistency": 0.9, "mean_accuracy": 0.9, "flip_rate": 0.1, "num_samples": 10, "num_shifts": 9}
    values.update(summary)
    return Finished(f"e-{model}-{minute}", f"m-{model}", model, sweep, {"padding": "zeros", "shifts": {}},
                    values, T0 + timedelta(minutes=minute))


def test_each_model_counts_with_its_latest_evaluation():
    rows = [finished("a", 1, consistency=0.99), finished("a", 5, consistency=0.80), finished("b", 2, consistency=0.85)]
    [sweep] = build_leaderboard(rows, "consistency")
    assert [(e["model_name"], e["rank"], e["value"]) for e in sweep["items"]] == [("b", 1, 0.85), ("a", 2, 0.80)]
    assert sweep["items"][1]["evaluation_id"] == "e-a-5"


def test_sweeps_are_ranked_separately_newest_first():
    rows = [finished("a", 1, "old", consistency=0.5), finished("b", 9, "new", consistency=0.7),
            finished("a", 3, "new", consistency=0.9)]
    sweeps = build_leaderboard(rows, "consistency")
    assert [s["sweep_key"] for s in sweeps] == ["new", "old"]
    assert [e["model_name"] for e in sweeps[0]["items"]] == ["a", "b"]
    assert [e["model_name"] for e in sweeps[1]["items"]] == ["a"]


def test_ties_share_a_rank_and_flip_rate_ranks_lowest_first():
    rows = [finished("a", 1, flip_rate=0.2), finished("b", 1, flip_rate=0.05), finished("c", 1, flip_rate=0.2),
            finished("d", 1, flip_rate=0.3)]
    ranked = rank_sweep(rows, "flip_rate")
    assert [(e["model_name"], e["rank"]) for e in ranked] == [("b", 1), ("a", 2), ("c", 2), ("d", 4)]


def test_a_missing_metric_comes_last_unranked():
    ranked = rank_sweep([finished("a", 1, flip_rate=None), finished("b", 1, flip_rate=0.4)], "flip_rate")
    assert [(e["model_name"], e["rank"]) for e in ranked] == [("b", 1), ("a", None)]


def test_throughput_spreads_each_sweeps_images_over_its_run():
    now = T0 + timedelta(hours=1)
    spans = [
        (now - timedelta(seconds=100), now - timedelta(seconds=50), 3000),  # inside the window: all of it
        (now - timedelta(seconds=600), None, 1200),  # running for 600 s: the last 300 s hold half
        (now - timedelta(seconds=900), now - timedelta(seconds=400), 10_000),  # over before the window
    ]
    assert images_per_second(spans, now, 300) == (3000 + 600) / 300
    assert images_per_second([], now, 300) == 0
