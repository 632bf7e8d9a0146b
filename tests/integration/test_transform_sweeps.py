"""Rotation × scale × brightness × translation sweeps end to end: PostgreSQL, Redis, API and a real worker."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import torch

from tests.models import DIGITS_INPUT, digits_arrays
from tests.reference import reference_transform, reference_transform_metrics
from worker.engine.plan import sample_indices

pytestmark = pytest.mark.integration

JOINT = {
    "shifts": {"dx": [-1, 1], "dy": [0, 1], "step": 1},
    "angle": {"range": [-20, 20], "step": 10},
    "scale": {"list": [1.1, 0.9]},
    "brightness": {"range": [0, 0.2], "step": 0.2},
}


def transforms_of(request: dict) -> list[tuple[float, ...]]:
    """SPEC §1b's rows written out: the product, brightness slowest and dx fastest."""
    def values(axis: dict) -> list[float]:
        if "list" in axis:
            return sorted(axis["list"])
        low, high = axis["range"]
        return [round(low + k * axis["step"], 9) for k in range(int((high - low) / axis["step"] + 1e-9) + 1)]

    s = request["shifts"]
    dxs = [round(s["dx"][0] + k * s["step"], 9) for k in range(int((s["dx"][1] - s["dx"][0]) / s["step"]) + 1)]
    dys = [round(s["dy"][0] + k * s["step"], 9) for k in range(int((s["dy"][1] - s["dy"][0]) / s["step"]) + 1)]
    return [(dx, dy, a, sc, b) for b in values(request["brightness"]) for sc in values(request["scale"])
            for a in values(request["angle"]) for dy in dys for dx in dxs]


def every_page(session, path: str, limit: int) -> list[dict]:
    """Follow `next_cursor` from the first page to the last."""
    items, cursor = [], None
    while True:
        page = session.get(path, params={"limit": limit, **({"cursor": cursor} if cursor else {})}).json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


@pytest.fixture(scope="module")
def bob(pg_stack):
    # Not "bob": test_end_to_end's other tenant must own nothing.
    return pg_stack.session("rotating-rita")


@pytest.fixture(scope="module")
def digits_model(bob, digits_model_file):
    return bob.wait_model(bob.upload_model(digits_model_file, DIGITS_INPUT, name="digits-cnn")["id"])


def test_a_joint_sweep_equals_the_reference(bob, digits_model, digits_model_file):
    request = {"model_id": digits_model["id"], "dataset_id": "digits", "padding": "zeros", "fill": 0.1,
               "max_samples": 120, "seed": 4, **JOINT}
    created = bob.post("/v1/evaluations", json=request)
    assert created.status_code == 202, created.text
    transforms = transforms_of(request)
    assert created.json()["progress"]["total"] == 120 * (len(transforms) + 1)  # the identity is not in the grid
    done = bob.wait_evaluation(created.json()["id"], timeout=300)
    assert done["status"] == "succeeded", done

    model = torch.jit.load(str(digits_model_file)).eval()
    images, labels = digits_arrays()
    rows = sample_indices(len(labels), 120, 4)
    floats, labels = images[rows].astype(np.float32)[:, None] / np.float32(255), labels[rows]

    mean, std = np.float32(digits_model["input"]["mean"][0]), np.float32(digits_model["input"]["std"][0])

    def predict(transform) -> np.ndarray:
        batch = np.stack([reference_transform(im, transform, "zeros", 0.1) for im in floats])
        with torch.no_grad():
            return model(torch.from_numpy((batch - mean) / std)).argmax(1).numpy()

    P = np.stack([predict(t) for t in transforms], axis=1)
    clean = predict((0, 0, 0, 1, 0))
    ref = reference_transform_metrics(P, clean, labels, transforms, {0: 1, 1: 1, 2: 10, 4: 0.2})
    summary = done["summary"]
    for key in ("clean_accuracy", "mean_accuracy", "worst_case_accuracy", "consistency", "flip_rate"):
        assert summary[key] == pytest.approx(ref[key], abs=1e-12), key
    assert summary["num_shifts"] == len(transforms) == 3 * 2 * 5 * 2 * 2

    items = every_page(bob, f"/v1/evaluations/{done['id']}/shifts", 50)
    assert [(r["dx"], r["dy"], r["angle"], r["scale"], r["brightness"]) for r in items] == transforms
    assert [r["accuracy"] for r in items] == pytest.approx(ref["accuracy"], abs=1e-12)
    assert [r["agreement"] for r in items] == pytest.approx(ref["agreement"], abs=1e-12)
    table = list(csv.DictReader(io.StringIO(bob.get(f"/v1/evaluations/{done['id']}/shifts?format=csv").text)))
    assert list(table[0])[:5] == ["dx", "dy", "angle", "scale", "brightness"]
    assert [float(t["angle"]) for t in table] == [t[2] for t in transforms]

    marginals = every_page(bob, f"/v1/evaluations/{done['id']}/marginals", 4)
    expected = []
    for axis, position in (("dx", 0), ("dy", 1), ("angle", 2), ("scale", 3), ("brightness", 4)):
        for value in sorted({t[position] for t in transforms}):
            columns = [j for j, t in enumerate(transforms) if t[position] == value]
            expected.append((axis, value, float(np.mean(P[:, columns] == labels[:, None])),
                             float(np.mean(P[:, columns] == clean[:, None])), 120 * len(columns)))
    assert [(m["axis"], m["value"], m["n"]) for m in marginals] == [(a, v, n) for a, v, _, _, n in expected]
    assert [m["accuracy"] for m in marginals] == pytest.approx([e[2] for e in expected], abs=1e-12)
    assert [m["agreement"] for m in marginals] == pytest.approx([e[3] for e in expected], abs=1e-12)


def test_a_rotation_only_sweep_and_its_sweep_identity(bob, digits_model):
    base = {"model_id": digits_model["id"], "dataset_id": "digits", "max_samples": 60}
    first = bob.wait_evaluation(bob.post("/v1/evaluations", json={**base, "angle": {"list": [-15, 15]}}).json()["id"])
    other = bob.wait_evaluation(bob.post("/v1/evaluations", json={**base, "angle": {"list": [-30, 30]}}).json()["id"])
    plain = bob.wait_evaluation(bob.post("/v1/evaluations", json={
        **base, "shifts": {"list": [[0, 0]]}}).json()["id"])
    assert first["status"] == other["status"] == plain["status"] == "succeeded"
    assert first["summary"]["num_shifts"] == 2 and first["summary"]["flip_rate"] is None
    assert len({first["sweep_key"], other["sweep_key"], plain["sweep_key"]}) == 3
    marginals = bob.get(f"/v1/evaluations/{first['id']}/marginals").json()["items"]
    assert [(m["axis"], m["value"]) for m in marginals] == [("angle", -15), ("angle", 15)]
    board = bob.get("/v1/leaderboard?dataset_id=digits").json()
    sweeps = {s["sweep_key"]: s["sweep"] for s in board["sweeps"]}
    assert sweeps[first["sweep_key"]]["angle"] == {"list": [-15.0, 15.0]}
    assert "angle" not in sweeps[plain["sweep_key"]]


@pytest.mark.parametrize("extra, field, message", [
    ({"padding": "crop", "angle": {"list": [10]}}, "padding", "takes translations and brightness only"),
    ({"scale": {"list": [0, 1]}}, "scale", "scale must be positive"),
    ({"scale": {"range": [-0.5, 1], "step": 0.5}}, "scale", "scale must be positive"),
    ({"angle": {"list": [10, 20, 10]}}, "angle", "repeats the value 10"),
    ({"shifts": {"dx": [-10, 10], "dy": [-10, 10]}, "angle": {"range": [-30, 30], "step": 1}}, "shifts",
     "at most 10000"),
    ({}, "shifts", "name at least one axis"),
])
def test_bad_grids_are_422_with_the_reason(bob, digits_model, extra, field, message):
    response = bob.post("/v1/evaluations", json={"model_id": digits_model["id"], "dataset_id": "digits", **extra})
    assert response.status_code == 422, response.text
    body = response.json()
    assert message in body["detail"]
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert body["errors"][0]["field"] == field


def test_the_client_and_the_cli_take_the_same_axes(pg_stack, bob, digits_model):
    import json
    import subprocess
    import sys

    from shiftscore import Client
    from tests.stack import ROOT

    token = pg_stack.token("rotating-rita")
    client = Client(pg_stack.url, token)
    results = client.evaluate(digits_model["id"], "digits", angle={"range": [-30, 30], "step": 10},
                              brightness={"list": [0.1]}, max_samples=50, timeout=120)
    assert [(r["angle"], r["brightness"]) for r in results.shifts] == [(a, 0.1) for a in range(-30, 31, 10)]
    marginals = client.marginals(results.evaluation["id"])
    assert [(m["axis"], m["value"]) for m in marginals] == [("angle", a) for a in range(-30, 31, 10)] + [
        ("brightness", 0.1)]
    env = {**pg_stack.env, "SHIFTSCORE_URL": pg_stack.url, "SHIFTSCORE_TOKEN": token}
    run = subprocess.run(
        [sys.executable, "-m", "shiftscore.cli", "eval", "--model-id", digits_model["id"], "--angle", "-30:30:10",
         "--brightness=0.1", "--max-samples", "50", "--json", "--quiet"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    evaluation = json.loads(run.stdout)["evaluation"]
    assert evaluation["request"]["angle"] == {"range": [-30.0, 30.0], "step": 10.0}
    assert "shifts" not in evaluation["request"]
    # The same sweep as the client's: the same identity, the same numbers.
    assert evaluation["sweep_key"] == results.evaluation["sweep_key"]
    assert evaluation["summary"] == results.summary
