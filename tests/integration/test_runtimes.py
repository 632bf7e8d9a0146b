"""Runtimes and the worst-case gate through the real stack, the sandbox on: chosen once, recorded, same counts."""

from __future__ import annotations

import torch

from core.chunking import chunk_bounds
from core.runtimes import REAL_DATA_ROWS
from core.settings import Settings
from tests.models import DIGITS_INPUT, trained_digits_cnn

GRID = {"dx": [-2, 2], "dy": [-2, 2], "step": 1}


def _evaluate(session, model_id: str, **extra) -> dict:
    response = session.post("/v1/evaluations", json={"model_id": model_id, "dataset_id": "digits",
                                                      "shifts": GRID, **extra})
    assert response.status_code == 202, response.text
    evaluation = session.wait_evaluation(response.json()["id"], timeout=300)
    assert evaluation["status"] == "succeeded", evaluation
    return evaluation


def _counts(session, evaluation_id: str) -> list[tuple]:
    rows = session.get(f"/v1/evaluations/{evaluation_id}/shifts", params={"limit": 1000}).json()["items"]
    return [(row["dx"], row["dy"], row["correct"], row["n"]) for row in rows]


def test_runtime_chosen_once_recorded_and_forced(pg_stack, digits_model_file):
    session = pg_stack.session("runtimes")
    model = session.wait_model(session.upload_model(digits_model_file, DIGITS_INPUT, name="rt-digits")["id"], 300)
    assert model["status"] == "ready", model
    runtime = model["runtime"]
    assert runtime["reference"] == "torch" and runtime["backend"] in runtime["candidates"]
    assert {"torch", "onnxruntime", "onednn"} == set(runtime["candidates"])
    for name, entry in runtime["candidates"].items():
        if entry["kept"]:
            assert entry["argmax_equal"] == entry["rows"] and entry["max_abs_diff"] <= entry["tolerance"]
            assert str(entry["batch_size"]) in entry["per_batch_size"]
    auto = _evaluate(session, model["id"])
    forced = _evaluate(session, model["id"], backend="torch")
    assert auto["runtime"]["backend"] == runtime["backend"] and auto["runtime"]["forced"] is False
    assert auto["runtime"]["batch_size"] == runtime["batch_size"]
    assert auto["runtime"]["agreement"]["rows"] == runtime["candidates"][runtime["backend"]]["rows"]
    assert forced["runtime"]["backend"] == "torch" and forced["runtime"]["forced"] is True
    _assert_real_data_check(auto, runtime, forced, Settings.from_env(pg_stack.env).chunk_images)
    # Same predictions: every per-shift count equal, whichever runtime ran.
    assert _counts(session, auto["id"]) == _counts(session, forced["id"])
    assert auto["summary"] == forced["summary"]
    # Chosen once, at validation: sweeps never measure again.
    assert session.get(f"/v1/models/{model['id']}").json()["runtime"] == runtime


def _assert_real_data_check(auto: dict, model_runtime: dict, forced: dict, chunk_images: int) -> None:
    """On another runtime every chunk checked its first real samples against torch eager; on torch, none did."""
    assert "real_data_check" not in forced["runtime"]
    if model_runtime["backend"] == "torch":  # the others timed slower here: nothing ran on another runtime
        assert "real_data_check" not in auto["runtime"]
        return
    samples = auto["summary"]["num_samples"]
    bounds = chunk_bounds(samples, auto["progress"]["total"] // samples, chunk_images)
    check = auto["runtime"]["real_data_check"]
    assert check["chunks"] == len(bounds) > 1
    assert check["rows"] == sum(min(REAL_DATA_ROWS, stop - start) for start, stop in bounds)
    # The digits CNN's export gives its predictions on the digits too: no chunk fell back.
    assert check["argmax_equal"] == check["rows"] and check["max_abs_diff"] <= check["tolerance"]
    assert check["fell_back_chunks"] == 0 and "note" not in auto["runtime"]


def test_onnx_model_runs_on_onnxruntime_and_refuses_torch(pg_stack, tmp_path):
    session = pg_stack.session("runtimes-onnx")
    model = trained_digits_cnn(epochs=2).eval()
    path = tmp_path / "digits.onnx"
    torch.onnx.export(model, (torch.zeros(2, 1, 8, 8),), str(path), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    uploaded = session.wait_model(session.upload_model(path, DIGITS_INPUT, fmt="onnx", name="rt-onnx")["id"], 300)
    assert uploaded["status"] == "ready", uploaded
    assert uploaded["runtime"]["backend"] == "onnxruntime" and set(uploaded["runtime"]["candidates"]) == {"onnxruntime"}
    refused = session.post("/v1/evaluations", json={"model_id": uploaded["id"], "dataset_id": "digits",
                                                     "shifts": GRID, "backend": "torch"})
    assert refused.status_code == 422 and "backend" in refused.text
    swept = _evaluate(session, uploaded["id"])["runtime"]
    # ONNX Runtime is this model's own runtime: nothing to check it against.
    assert swept["backend"] == "onnxruntime" and "real_data_check" not in swept


def test_early_exit_gives_the_full_sweeps_worst_case(pg_stack, digits_model_file):
    session = pg_stack.session("runtimes-gate")
    model = session.wait_model(session.upload_model(digits_model_file, DIGITS_INPUT, name="rt-gate")["id"], 300)
    full = _evaluate(session, model["id"])
    gated = _evaluate(session, model["id"], early_exit=True)
    assert gated["summary"]["worst_case_accuracy"] == full["summary"]["worst_case_accuracy"]
    assert gated["summary"]["clean_accuracy"] == full["summary"]["clean_accuracy"]
    assert gated["summary"]["mean_accuracy"] is None and gated["summary"]["consistency"] is None
    assert "early_exit" in gated["summary"]["note"]
    assert gated["progress"]["done"] == gated["progress"]["total"]
    assert gated["sweep_key"] != full["sweep_key"]
    assert session.get(f"/v1/evaluations/{gated['id']}/shifts").json()["items"] == []
    assert session.get(f"/v1/evaluations/{gated['id']}/heatmap.png").status_code == 422
    report = session.get(f"/v1/evaluations/{gated['id']}/report.html")
    assert report.status_code == 200 and "early_exit" in report.text
