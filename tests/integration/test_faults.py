"""Nothing lost, nothing duplicated: faults injected into the real stack (API, Celery workers, Redis, PostgreSQL).

One stack for the module: two worker processes, the scheduler (reconciler), and
a redis-server of its own that the Redis test kills and restarts. Figures for
each scenario (submitted, succeeded, lost, duplicated, time to recover) are
printed at the end (`pytest -s`).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import torch
from torch import nn

from tests.integration.test_end_to_end import reference_for
from tests.models import DIGITS_INPUT, save_torchscript, trained_digits_cnn
from tests.stack import ApiSession, Stack, running_stack

pytestmark = pytest.mark.integration

# A part now includes starting its model sandbox (a second or two on a busy machine).
SOFT_LIMIT_S = 15
STALE_AFTER_S = 2
FIGURES: dict[str, dict] = {}
TERMINAL = {"succeeded", "failed", "cancelled"}


class Slowed(nn.Module):
    """The same predictions as `base`, at `1 + repeats` times its cost (adding 0 × logits changes nothing).

    Each repeat sees a different input, so no runtime can merge the repeats into one (ONNX
    Runtime's common-subexpression elimination did, when they were the same call on `x`).
    """

    def __init__(self, base: nn.Module, repeats: int) -> None:
        super().__init__()
        self.base = base
        self.repeats = repeats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        for i in range(self.repeats):
            out = out + 0.0 * self.base(x + float(i + 1))
        return out


@pytest.fixture(scope="module")
def stack(tmp_path_factory, broker) -> Iterator[Stack]:
    overrides = {
        "SHIFTSCORE_STALE_AFTER": str(STALE_AFTER_S), "SHIFTSCORE_CHUNK_IMAGES": "30000",
        "SHIFTSCORE_TASK_SOFT_TIME_LIMIT": str(SOFT_LIMIT_S),
        "SHIFTSCORE_TASK_HARD_TIME_LIMIT": str(SOFT_LIMIT_S + 4), "SHIFTSCORE_MAX_ATTEMPTS": "3",
    }
    try:
        with running_stack(tmp_path_factory.mktemp("faults-stack"), workers=2, broker_url=broker.url,
                           **overrides) as stack:
            yield stack
    finally:
        print("\nfault figures:\n" + json.dumps(FIGURES, indent=1))


@pytest.fixture(scope="module")
def client(stack) -> ApiSession:
    return stack.session("faults")


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    return trained_digits_cnn()


def _upload(client: ApiSession, module: nn.Module, path) -> dict:
    model = client.wait_model(client.upload_model(save_torchscript(module, path), DIGITS_INPUT)["id"])
    assert model["status"] == "ready", model
    return model


@pytest.fixture(scope="module")
def fast_model(client, trained, tmp_path_factory) -> dict:
    return _upload(client, trained, tmp_path_factory.mktemp("m") / "fast.pt")


@pytest.fixture(scope="module")
def slow_model(client, trained, tmp_path_factory) -> dict:
    """5× the trained model's cost: the big sweep takes seconds, in 4 chunks of ~2 s."""
    return _upload(client, Slowed(trained, 4), tmp_path_factory.mktemp("m") / "slow.pt")


@pytest.fixture(scope="module")
def very_slow_model(client, trained, tmp_path_factory) -> dict:
    """61× the trained model's cost: a one-chunk sweep of all digits × 25 shifts runs well past 8 s."""
    return _upload(client, Slowed(trained, 60), tmp_path_factory.mktemp("m") / "very_slow.pt")


@pytest.fixture(scope="module")
def big_request(slow_model) -> dict:
    """All 1,797 digits × 81 shifts = 145,557 images: 4 chunks at SHIFTSCORE_CHUNK_IMAGES=30000."""
    return {"model_id": slow_model["id"], "dataset_id": "digits", "shifts": {"dx": [-4, 4], "dy": [-4, 4]}}


def submit(client: ApiSession, body: dict, key: str | None = None) -> dict:
    headers = {"Idempotency-Key": key} if key else {}
    response = client.post("/v1/evaluations", json=body, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()


def results(client: ApiSession, evaluation_id: str) -> dict:
    """Everything a user can read about a finished evaluation's outcome."""
    body = client.get(f"/v1/evaluations/{evaluation_id}").json()
    return {
        "summary": body["summary"],
        "shifts": client.get(f"/v1/evaluations/{evaluation_id}/shifts").json()["items"],
        "classes": client.get(f"/v1/evaluations/{evaluation_id}/classes").json()["items"],
        "examples": client.get(f"/v1/evaluations/{evaluation_id}/examples?limit=100").json()["items"],
    }


def poll(client: ApiSession, evaluation_id: str, timeout: float = 90, seen: list | None = None,
         outages: list | None = None) -> dict:
    """Poll as a pipeline would: through connection errors, until the evaluation ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            body = client.get(f"/v1/evaluations/{evaluation_id}", timeout=5).json()
        except requests.RequestException as exc:
            if outages is not None:
                outages.append(type(exc).__name__)
            time.sleep(0.1)
            continue
        if seen is not None:
            seen.append(body)
        if body["status"] in TERMINAL:
            return body
        time.sleep(0.1)
    raise AssertionError(f"evaluation {evaluation_id} did not end within {timeout} s")


def wait_for(condition, timeout: float = 60, every: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout} s")


def chunks(stack: Stack, evaluation_id: str) -> list[tuple]:
    return stack.sql(
        'SELECT "index", status, attempts, worker, done, total FROM evaluation_chunks '
        'WHERE evaluation_id = %s ORDER BY "index"', evaluation_id,
    )


def assert_stored_once(stack: Stack, evaluation_id: str, num_shifts: int) -> None:
    """One row per shift, one succeeded evaluation: no result written twice."""
    rows = stack.sql("SELECT position FROM shift_results WHERE evaluation_id = %s", evaluation_id)
    assert sorted(r[0] for r in rows) == list(range(num_shifts))


def outcome_figures(stack: Stack, outcomes: dict[str, dict], num_shifts: int) -> dict:
    """Submitted, succeeded, lost (never ended) and duplicated (per-shift rows beyond one per shift)."""
    stored = dict(stack.sql(
        "SELECT evaluation_id, count(*) FROM shift_results WHERE evaluation_id = ANY(%s) GROUP BY evaluation_id",
        list(outcomes),
    ))
    return {
        "submitted": len(outcomes),
        "succeeded": sum(o["status"] == "succeeded" for o in outcomes.values()),
        "lost": sum(o["status"] not in TERMINAL for o in outcomes.values()),
        "duplicated": sum(max(0, stored.get(i, 0) - num_shifts) for i in outcomes),
    }


def assert_counts_up(seen: list[dict]) -> None:
    done = [s["progress"]["done"] for s in seen]
    assert done == sorted(done), "progress went backwards"
    # A chunk swept twice must not count twice: before the finish sets done = total, it never overshoots.
    assert all(d <= s["progress"]["total"] for d, s in zip(done, seen))
    assert seen[-1]["progress"]["done"] == seen[-1]["progress"]["total"]


@pytest.fixture(scope="module")
def reference(client, big_request) -> dict:
    """The big sweep, undisturbed."""
    started = time.monotonic()
    done = poll(client, submit(client, big_request)["id"])
    assert done["status"] == "succeeded", done
    FIGURES["undisturbed_big_sweep_s"] = round(time.monotonic() - started, 2)
    return {"id": done["id"], **results(client, done["id"])}


def same_results(client: ApiSession, evaluation_id: str, reference: dict) -> bool:
    return {"id": reference["id"], **results(client, evaluation_id)} == reference


def test_a_retried_post_returns_the_same_evaluation(stack, client, fast_model):
    body = {"model_id": fast_model["id"], "dataset_id": "digits", "shifts": {"list": [[1, 0]]},
            "max_samples": 10}
    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda _: submit(client, body, key="retry-1")["id"], range(8)))
    assert len(ids) == 1
    (evaluation_id,) = ids
    assert poll(client, evaluation_id)["status"] == "succeeded"
    assert submit(client, body, key="retry-1")["id"] == evaluation_id
    assert stack.sql("SELECT count(*) FROM evaluations WHERE idempotency_key = 'retry-1'") == [(1,)]
    response = client.post("/v1/evaluations", json={**body, "max_samples": 11}, headers={"Idempotency-Key": "retry-1"})
    assert response.status_code == 422
    assert response.headers["Content-Type"] == "application/problem+json"
    assert "Idempotency-Key" in response.json()["detail"]
    FIGURES["idempotency"] = {"posts_same_key_same_body": 9, "evaluations": len(ids)}


def test_big_sweep_is_split_into_chunks_that_both_workers_run(stack, client, big_request, reference, trained,
                                                              tmp_path):
    rows = chunks(stack, reference["id"])
    assert len(rows) == 4 and all(r[1] == "done" and r[2] == 1 for r in rows)
    assert sum(r[5] for r in rows) == 1797 * 81
    assert len({r[3] for r in rows}) == 2, "both workers should have run chunks"
    # The merged chunks equal SPEC §1-2 computed in one piece by the numpy reference.
    expected = reference_for(save_torchscript(trained, tmp_path / "plain.pt"), {**big_request, "padding": "zeros"},
                             DIGITS_INPUT)
    for key in ("clean_accuracy", "mean_accuracy", "worst_case_accuracy", "consistency", "flip_rate"):
        assert reference["summary"][key] == pytest.approx(expected[key], abs=1e-12), key
    assert [r["accuracy"] for r in reference["shifts"]] == pytest.approx(expected["accuracy"], abs=1e-12)


def test_worker_killed_mid_sweep_is_resumed_by_another(stack, client, big_request, reference):
    evaluation_id = submit(client, big_request)["id"]
    seen: list[dict] = []

    def mid_sweep():
        rows = chunks(stack, evaluation_id)
        running = [r for r in rows if r[1] == "running" and 0 < r[4] < r[5] // 2]
        return running if running and any(r[1] == "done" for r in rows) else None

    victim_chunk = wait_for(mid_sweep)[0]
    victim_name = victim_chunk[3]
    before = {r[0]: r for r in chunks(stack, evaluation_id)}
    stack.kill_worker(stack.worker_running(int(victim_name.rsplit(":", 1)[1])))
    killed_at = time.monotonic()
    interrupted = {r[0] for r in chunks(stack, evaluation_id) if r[1] == "running" and r[3] == victim_name}
    stack.start_worker()
    done = poll(client, evaluation_id, seen=seen)
    recovered = time.monotonic() - killed_at

    assert done["status"] == "succeeded", done
    assert same_results(client, evaluation_id, reference)
    assert_stored_once(stack, evaluation_id, 81)
    assert_counts_up(seen)
    after = {r[0]: r for r in chunks(stack, evaluation_id)}
    assert victim_chunk[0] in interrupted
    for index, row in after.items():
        assert row[1] == "done"
        if index in interrupted:
            assert row[2] == 2 and row[3] != victim_name, row  # run again, elsewhere
        else:
            assert row[2] == 1, row  # never recomputed
        if before[index][1] == "done":
            assert row[3] == before[index][3], "a finished chunk was recomputed"
    assert done["attempts"] == 2
    FIGURES["worker_sigkill"] = {**outcome_figures(stack, {evaluation_id: done}, 81),
                                 "chunks": len(after), "chunks_rerun": len(interrupted),
                                 "kill_to_succeeded_s": round(recovered, 2)}


def test_api_restart_loses_nothing_and_clients_keep_polling(stack, client, big_request, reference):
    first = submit(client, big_request, key="across-restart")
    wait_for(lambda: client.get(f"/v1/evaluations/{first['id']}").json()["progress"]["done"] > 0)
    outages: list[str] = []
    seen: list[dict] = []
    poller = ThreadPoolExecutor(1).submit(poll, client, first["id"], 90, seen, outages)
    stack.stop_api()
    stopped_at = time.monotonic()
    time.sleep(0.5)
    stack.start_api()
    back_after = time.monotonic() - stopped_at
    assert submit(client, big_request, key="across-restart")["id"] == first["id"]
    done = poller.result(timeout=90)
    assert done["status"] == "succeeded", done
    assert outages, "the poller should have seen the API down"
    assert same_results(client, first["id"], reference)
    assert_stored_once(stack, first["id"], 81)
    assert_counts_up(seen)
    FIGURES["api_restart"] = {**outcome_figures(stack, {first["id"]: done}, 81),
                              "api_down_s": round(back_after, 2), "failed_polls": len(outages)}


def test_redis_restart_mid_run_loses_nothing(stack, client, broker, big_request, fast_model, reference):
    running = submit(client, big_request)["id"]
    wait_for(lambda: client.get(f"/v1/evaluations/{running}").json()["progress"]["done"] > 0)
    broker.kill()
    killed_at = time.monotonic()
    # Submitted while the broker is down: the row is committed, the enqueue fails.
    small = {"model_id": fast_model["id"], "dataset_id": "digits", "shifts": {"dx": [-1, 1], "dy": [0, 0]},
             "max_samples": 50}
    during = submit(client, small)["id"]
    time.sleep(1.0)
    broker.start()
    restarted_at = time.monotonic()
    outcomes = {i: poll(client, i, timeout=90) for i in (running, during)}
    recovered = time.monotonic() - restarted_at
    assert {i: o["status"] for i, o in outcomes.items()} == {running: "succeeded", during: "succeeded"}
    assert same_results(client, running, reference)
    assert_stored_once(stack, running, 81)
    assert_stored_once(stack, during, 3)
    big, small_one = (outcome_figures(stack, {i: outcomes[i]}, n) for i, n in ((running, 81), (during, 3)))
    FIGURES["redis_restart"] = {**{k: big[k] + small_one[k] for k in big},
                                "broker_down_s": round(restarted_at - killed_at, 2),
                                "restart_to_all_succeeded_s": round(recovered, 2)}


def test_cancel_stops_queued_and_running_sweeps(stack, client, very_slow_model, fast_model):
    # Each is one chunk of several seconds: both workers busy with them.
    slow = {"model_id": very_slow_model["id"], "dataset_id": "digits", "shifts": {"dx": [-2, 2], "dy": [-2, 2]}}
    running = [submit(client, {**slow, "seed": seed})["id"] for seed in (1, 2)]
    wait_for(lambda: all(client.get(f"/v1/evaluations/{i}").json()["progress"]["done"] > 0 for i in running),
             timeout=30)
    queued = submit(client, {**slow, "seed": 3})["id"]
    assert client.get(f"/v1/evaluations/{queued}").json()["status"] == "queued"
    cancelled_at = time.monotonic()
    for evaluation_id in [queued, *running]:
        response = client.post(f"/v1/evaluations/{evaluation_id}/cancel")
        assert response.status_code == 202 and response.json()["status"] == "cancelled"
    # The workers stop at their next progress write: a new sweep starts and ends long before
    # the cancelled ones' remaining work could have.
    after = submit(client, {"model_id": fast_model["id"], "dataset_id": "digits", "shifts": {"list": [[1, 1]]},
                            "max_samples": 20})["id"]
    assert poll(client, after, timeout=30)["status"] == "succeeded"
    freed = time.monotonic() - cancelled_at
    assert freed < 4, f"the workers took {freed:.1f} s to drop the cancelled sweeps"
    frozen = [client.get(f"/v1/evaluations/{i}").json()["progress"]["done"] for i in running]
    time.sleep(0.5)
    for evaluation_id, done in zip(running, frozen):
        body = client.get(f"/v1/evaluations/{evaluation_id}").json()
        assert body["status"] == "cancelled" and body["progress"]["done"] == done < body["progress"]["total"]
        assert all(r[1] == "stopped" for r in chunks(stack, evaluation_id))
    assert all(r[2] == 0 for r in chunks(stack, queued)), "a cancelled queued sweep must never run"
    ended = {i: client.get(f"/v1/evaluations/{i}").json() for i in [queued, *running]}
    FIGURES["cancel"] = {"submitted": len(ended),
                         "cancelled": sum(e["status"] == "cancelled" for e in ended.values()),
                         "cancel_to_workers_free_s": round(freed, 2)}


def test_a_sweep_past_its_time_limit_fails_and_the_worker_lives_on(stack, client, very_slow_model, fast_model):
    # Eager torch: ONNX Runtime runs this model fast enough to finish inside the limit.
    body = {"model_id": very_slow_model["id"], "dataset_id": "digits", "shifts": {"dx": [-2, 2], "dy": [-2, 2]},
            "backend": "torch"}
    evaluation_id = submit(client, body)["id"]
    started = time.monotonic()
    done = poll(client, evaluation_id, timeout=60)
    took = time.monotonic() - started
    assert done["status"] == "failed", done
    assert done["error"]["type"] == "time_limit"
    assert f"{SOFT_LIMIT_S} s" in done["error"]["detail"] and "SHIFTSCORE_TASK_SOFT_TIME_LIMIT" in done["error"]["detail"]
    assert SOFT_LIMIT_S - 1 < took < SOFT_LIMIT_S + 6
    ((_, _, attempts, worker, _, _),) = chunks(stack, evaluation_id)
    pid = int(worker.rsplit(":", 1)[1])
    os.kill(pid, 0)  # the pool process that hit the limit is still alive
    assert attempts == 1 and all(w.poll() is None for w in stack.workers)
    follow_up = submit(client, {"model_id": fast_model["id"], "dataset_id": "digits",
                                "shifts": {"list": [[0, 1]]}, "max_samples": 20})["id"]
    assert poll(client, follow_up, timeout=30)["status"] == "succeeded"
    FIGURES["time_limit"] = {"submitted": 1, "error": done["error"]["type"], "soft_limit_s": SOFT_LIMIT_S,
                             "submit_to_failed_s": round(took, 2)}


def test_a_chunk_whose_worker_dies_every_time_fails_after_the_attempt_limit(stack, client, very_slow_model):
    body = {"model_id": very_slow_model["id"], "dataset_id": "digits", "shifts": {"dx": [-2, 2], "dy": [-2, 2]},
            "seed": 9}
    evaluation_id = submit(client, body)["id"]
    for attempt in (1, 2, 3):
        row = wait_for(lambda: next((r for r in chunks(stack, evaluation_id)
                                     if r[1] == "running" and r[2] == attempt and r[4] > 0), None), timeout=30)
        os.kill(int(row[3].rsplit(":", 1)[1]), signal.SIGKILL)  # the pool process dies, as in an OOM kill
        killed_at = time.monotonic()
    done = poll(client, evaluation_id, timeout=30)
    assert done["status"] == "failed", done
    assert done["error"]["type"] == "attempts_exhausted"
    assert "3 times" in done["error"]["detail"] and "SHIFTSCORE_MAX_ATTEMPTS" in done["error"]["detail"]
    assert [r[1:3] for r in chunks(stack, evaluation_id)] == [("stopped", 3)]
    assert all(w.poll() is None for w in stack.workers)
    FIGURES["attempt_limit"] = {"submitted": 1, "error": done["error"]["type"], "attempts": done["attempts"],
                                "last_kill_to_failed_s": round(time.monotonic() - killed_at, 2)}


def test_a_hundred_concurrent_evaluations_all_succeed_once(stack, client, fast_model, tmp_path, trained):
    shifts = {"list": [[0, 0], [1, 0], [0, -1], [2, 2]]}
    bodies = [{"model_id": fast_model["id"], "dataset_id": "digits", "shifts": shifts, "padding": "zeros", "max_samples": 20,
               "seed": i % 5, "tags": ["load"]} for i in range(100)]
    started = time.monotonic()
    with ThreadPoolExecutor(10) as pool:
        created = list(pool.map(lambda b: submit(client, b), bodies))
    ids = [c["id"] for c in created]
    assert len(set(ids)) == 100
    outcomes = [poll(client, i, timeout=120) for i in ids]
    took = time.monotonic() - started
    assert [o["status"] for o in outcomes] == ["succeeded"] * 100
    model_file = save_torchscript(trained, tmp_path / "reference.pt")
    expected = {seed: reference_for(model_file, bodies[seed], DIGITS_INPUT) for seed in range(5)}
    for body, outcome in zip(bodies, outcomes):
        ref = expected[body["seed"]]
        for key in ("clean_accuracy", "mean_accuracy", "worst_case_accuracy", "consistency", "flip_rate"):
            assert outcome["summary"][key] == pytest.approx(ref[key], abs=1e-12), key
    placeholders = ",".join(["%s"] * 100)
    assert stack.sql(f"SELECT count(*) FROM evaluations WHERE id IN ({placeholders})", *ids) == [(100,)]
    assert stack.sql(f"SELECT count(*), sum(attempts) FROM evaluation_chunks WHERE evaluation_id IN ({placeholders})",
                     *ids) == [(100, 100)]
    assert stack.sql(f"SELECT count(*) FROM shift_results WHERE evaluation_id IN ({placeholders})",
                     *ids) == [(400,)]
    figures = outcome_figures(stack, dict(zip(ids, outcomes)), 4)
    assert figures == {"submitted": 100, "succeeded": 100, "lost": 0, "duplicated": 0}
    FIGURES["load"] = {**figures, "threads": 10, "submit_to_all_succeeded_s": round(took, 2)}
