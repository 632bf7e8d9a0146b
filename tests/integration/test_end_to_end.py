"""Upload → evaluate → results on real PostgreSQL, Redis, gunicorn and a Celery worker process."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import torch

from core.grid import build_grid
from tests.models import DIGITS_INPUT, circular_invariant_cnn, digits_arrays, save_torchscript
from tests.reference import reference_metrics, reference_shift
from worker.engine.plan import sample_indices

pytestmark = pytest.mark.integration


def reference_for(model_file, request: dict, input_spec: dict) -> dict:
    """SPEC §1–2 computed in the test: the stored model, numpy shifts, the formulas."""
    model = torch.jit.load(str(model_file)).eval()
    images, labels = digits_arrays()
    rows = sample_indices(len(labels), request.get("max_samples"), request.get("seed", 0))
    images, labels = images[rows], labels[rows]
    grid = build_grid(request["shifts"])
    floats = images.astype(np.float32)[:, None] / np.float32(255)
    mean, std = np.float32(input_spec["mean"][0]), np.float32(input_spec["std"][0])

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy((batch - mean) / std)).argmax(1).numpy()

    fill = np.float32(request.get("fill", 0.0))
    shifted = [
        np.stack([reference_shift(im, int(dx), int(dy), request["padding"], fill) for im in floats])
        for dx, dy in grid.shifts
    ]
    P = np.stack([predict(batch) for batch in shifted], axis=1)
    clean = predict(floats)
    return reference_metrics(P, clean, labels, list(grid.shifts), grid.step)


@pytest.fixture(scope="module")
def alice(pg_stack):
    return pg_stack.session("alice")


@pytest.fixture(scope="module")
def digits_model(alice, digits_model_file):
    model = alice.upload_model(digits_model_file, DIGITS_INPUT, name="digits-cnn")
    assert model["status"] == "validating"
    ready = alice.wait_model(model["id"])
    assert ready["status"] == "ready", ready
    assert ready["num_outputs"] == 10 and ready["num_parameters"] > 0
    return ready


@pytest.mark.parametrize("padding,fill", [("zeros", 0.2), ("reflect", 0.0), ("edge", 0.0)])
def test_results_equal_the_reference(alice, digits_model, digits_model_file, padding, fill):
    request = {
        "model_id": digits_model["id"], "dataset_id": "digits", "padding": padding, "fill": fill,
        "shifts": {"dx": [-2, 2], "dy": [-1, 2], "step": 1}, "max_samples": 150, "seed": 3,
    }
    response = alice.post("/v1/evaluations", json=request)
    assert response.status_code == 202, response.text
    assert response.headers["Location"] == f"/v1/evaluations/{response.json()['id']}"
    done = alice.wait_evaluation(response.json()["id"])
    assert done["status"] == "succeeded", done
    ref = reference_for(digits_model_file, request, digits_model["input"])
    summary = done["summary"]
    for key in ("clean_accuracy", "mean_accuracy", "worst_case_accuracy", "consistency", "flip_rate"):
        assert summary[key] == pytest.approx(ref[key], abs=1e-12), key
    assert summary["num_samples"] == 150 and summary["num_shifts"] == 20
    assert summary["clean_accuracy"] > 0.9  # a trained model: the numbers mean something
    rows = alice.get(f"/v1/evaluations/{done['id']}/shifts").json()["items"]
    assert [(r["dx"], r["dy"]) for r in rows] == [(dx, dy) for dy in range(-1, 3) for dx in range(-2, 3)]
    assert [r["accuracy"] for r in rows] == pytest.approx(ref["accuracy"], abs=1e-12)
    assert [r["agreement"] for r in rows] == pytest.approx(ref["agreement"], abs=1e-12)
    assert all(r["n"] == 150 and r["correct"] == round(r["accuracy"] * 150) for r in rows)


def test_progress_moves_and_results_come_as_json_and_csv(alice, digits_model):
    request = {"model_id": digits_model["id"], "dataset_id": "digits",
               "shifts": {"dx": [-3, 3], "dy": [-3, 3]}}
    created = alice.post("/v1/evaluations", json=request).json()
    assert created["status"] == "queued" and created["progress"]["total"] == 1797 * 49
    seen: list[dict] = []
    done = alice.wait_evaluation(created["id"], seen=seen)
    assert done["status"] == "succeeded", done
    assert done["progress"] == {"done": 1797 * 49, "total": 1797 * 49}
    partial = [s["progress"]["done"] for s in seen if s["status"] == "running"]
    assert any(0 < d < 1797 * 49 for d in partial), f"never saw partial progress: {partial[:5]}"
    assert partial == sorted(partial), "progress went backwards"
    assert done["started_at"] and done["finished_at"] and done["error"] is None
    rows = alice.get(f"/v1/evaluations/{done['id']}/shifts").json()["items"]
    table = list(csv.DictReader(io.StringIO(alice.get(f"/v1/evaluations/{done['id']}/shifts?format=csv").text)))
    assert len(table) == len(rows) == 49
    assert [float(t["accuracy"]) for t in table] == [r["accuracy"] for r in rows]
    classes = alice.get(f"/v1/evaluations/{done['id']}/classes").json()["items"]
    assert [c["label"] for c in classes] == list(range(10))
    assert sum(c["n"] for c in classes) == 1797
    examples = alice.get(f"/v1/evaluations/{done['id']}/examples?limit=5").json()["items"]
    assert 0 < len(examples) <= 5
    assert [e["flips"] for e in examples] == sorted((e["flips"] for e in examples), reverse=True)


def test_circular_invariant_model_scores_perfect_consistency(alice, tmp_path):
    path = save_torchscript(circular_invariant_cnn(), tmp_path / "invariant.pt")
    model = alice.wait_model(alice.upload_model(path, DIGITS_INPUT)["id"])
    request = {"model_id": model["id"], "dataset_id": "digits", "padding": "circular",
               "shifts": {"dx": [-3, 3], "dy": [-3, 3]}, "max_samples": 200}
    done = alice.wait_evaluation(alice.post("/v1/evaluations", json=request).json()["id"])
    assert done["summary"]["consistency"] == 1.0
    assert done["summary"]["flip_rate"] == 0.0
    rows = alice.get(f"/v1/evaluations/{done['id']}/shifts").json()["items"]
    assert {r["accuracy"] for r in rows} == {done["summary"]["clean_accuracy"]}


def test_another_tenant_sees_none_of_it(pg_stack, alice, digits_model):
    evaluation = alice.post("/v1/evaluations", json={
        "model_id": digits_model["id"], "dataset_id": "digits", "shifts": {"list": [[1, 0]]},
        "max_samples": 10,
    }).json()
    bob = pg_stack.session("bob")
    for path in (f"/v1/models/{digits_model['id']}", f"/v1/evaluations/{evaluation['id']}",
                 f"/v1/evaluations/{evaluation['id']}/shifts"):
        response = bob.get(path)
        assert response.status_code == 404, path
        assert response.headers["Content-Type"] == "application/problem+json"
    assert bob.get("/v1/models").json()["items"] == []
    assert bob.get("/v1/evaluations").json()["items"] == []
    assert [d["name"] for d in bob.get("/v1/datasets").json()["items"]] == ["digits"]
    response = bob.post("/v1/evaluations", json={
        "model_id": digits_model["id"], "dataset_id": "digits", "shifts": {"list": [[1, 0]]}})
    assert response.status_code == 404
    assert bob.delete(f"/v1/models/{digits_model['id']}").status_code == 404
    assert alice.get(f"/v1/models/{digits_model['id']}").status_code == 200


def test_bad_requests_get_problem_details(pg_stack, alice, digits_model, tmp_path):
    anonymous = pg_stack.session("carol")
    anonymous.headers.pop("Authorization")
    response = anonymous.get("/v1/models")
    assert response.status_code == 401 and response.json()["status"] == 401
    anonymous.headers["Authorization"] = "Bearer nope"
    assert anonymous.get("/v1/models").status_code == 401

    def problem(body: dict, status: int, needle: str) -> None:
        response = alice.post("/v1/evaluations", json=body)
        assert response.status_code == status, response.text
        assert response.headers["Content-Type"] == "application/problem+json"
        problem = response.json()
        assert {"type", "title", "status", "detail"} <= set(problem)
        assert needle in problem["detail"], problem

    base = {"model_id": digits_model["id"], "dataset_id": "digits", "shifts": {"dx": [-1, 1], "dy": [0, 0]}}
    problem({**base, "model_id": "missing"}, 404, "no model")
    problem({**base, "dataset_id": "missing"}, 404, "no dataset")
    problem({**base, "shifts": {"list": [[1, 0], [1, 0]]}}, 422, "repeats")
    problem({**base, "shifts": {"dx": [-8, 8], "dy": [0, 0]}}, 422, "|dx| < 8")
    problem({**base, "padding": "sideways"}, 400, "padding")
    problem({**base, "fill": 2}, 400, "fill")
    # Naming no axis at all (shifts, angle, scale, brightness) is a rule, not a shape: 422.
    problem({k: v for k, v in base.items() if k != "shifts"}, 422, "name at least one axis")
    response = alice.post("/v1/evaluations", data="not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400

    # A dataset with 3 channels against a 1-channel model is a 422 that names both.
    rgb = tmp_path / "rgb.npz"
    np.savez(rgb, images=np.zeros((4, 8, 8, 3), np.uint8), labels=np.arange(4))
    dataset = alice.upload_dataset(rgb, "rgb")
    problem({**base, "dataset_id": dataset["id"]}, 422, "3 channel(s) but the model declares 1")
    # Labels beyond the model's outputs.
    many = tmp_path / "many.npz"
    np.savez(many, images=np.zeros((4, 8, 8), np.uint8), labels=np.array([0, 1, 2, 12]))
    dataset = alice.upload_dataset(many, "many-classes")
    problem({**base, "dataset_id": dataset["id"]}, 422, "labels up to 12")


def test_uploaded_npz_dataset_is_evaluated(alice, digits_model, tmp_path):
    images, labels = digits_arrays()
    path = tmp_path / "subset.npz"
    np.savez_compressed(path, images=images[:100], labels=labels[:100])
    dataset = alice.upload_dataset(path, "first-100")
    assert (dataset["num_samples"], dataset["channels"], dataset["height"], dataset["width"]) == (100, 1, 8, 8)
    assert dataset["num_classes"] == 10 and len(dataset["sha256"]) == 64
    done = alice.wait_evaluation(alice.post("/v1/evaluations", json={
        "model_id": digits_model["id"], "dataset_id": dataset["id"], "shifts": {"dx": [0, 1], "dy": [0, 1]},
    }).json()["id"])
    assert done["status"] == "succeeded" and done["summary"]["num_samples"] == 100


def test_evaluations_are_listed_filtered_and_paginated(alice, digits_model):
    ids = [alice.post("/v1/evaluations", json={
        "model_id": digits_model["id"], "dataset_id": "digits", "shifts": {"list": [[i, 0]]},
        "max_samples": 5, "tags": ["paging"],
    }).json()["id"] for i in range(3)]
    for evaluation_id in ids:
        alice.wait_evaluation(evaluation_id)
    seen, cursor = [], None
    while True:
        page = alice.get("/v1/evaluations", params={"limit": 2, "model_id": digits_model["id"],
                                                   **({"cursor": cursor} if cursor else {})}).json()
        seen += [e["id"] for e in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert set(ids) <= set(seen) and len(seen) == len(set(seen))
    tagged = alice.get("/v1/evaluations", params={"tag": "paging"}).json()["items"]
    assert {e["id"] for e in tagged} == set(ids)
    failed = alice.get("/v1/evaluations", params={"status": "failed"}).json()["items"]
    assert not set(ids) & {e["id"] for e in failed}
    assert alice.get("/v1/evaluations", params={"status": "bogus"}).status_code == 400
    assert alice.get("/v1/evaluations", params={"cursor": "garbage"}).status_code == 400


def test_health_and_readiness(pg_stack):
    import requests

    assert requests.get(pg_stack.url + "/healthz", timeout=5).json() == {"status": "ok"}
    ready = requests.get(pg_stack.url + "/readyz", timeout=5)
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}
