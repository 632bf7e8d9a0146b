"""Mistakes a newcomer makes get a 4xx (or exit code) that says what to do, in our words, not a library's."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.models import DIGITS_INPUT
from tests.stack import ROOT

pytestmark = pytest.mark.integration
INTERNALS = ("RangeShifts", "ListShifts", "Tuple should", "shifts as a range", "shifts as a list")


@pytest.fixture(scope="module")
def erin(pg_stack):
    return pg_stack.session("erin")


@pytest.fixture(scope="module")
def ready_model(erin, digits_model_file) -> dict:
    model = erin.wait_model(erin.upload_model(digits_model_file, DIGITS_INPUT, name="errors-cnn")["id"])
    assert model["status"] == "ready", model
    return model


def problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    return response.json()


@pytest.mark.parametrize("shifts,field,needle", [
    ({"dx": [-2, 2, 3], "dy": [-2, 2]}, "shifts.dx", "dx must be [min, max], two numbers"),
    ({"dx": 2, "dy": [-2, 2]}, "shifts.dx", "dx must be [min, max], two numbers"),
    ({"dx": [-2, 2]}, "shifts.dy", 'dy is missing; give shifts as {"dx": [min, max], "dy": [min, max]'),
    ({"list": [[1, 0, 2]]}, "shifts.list.0", "each shift must be [dx, dy], two numbers"),
    ({"list": [[1, 0]], "dx": [0, 1]}, "shifts.dx", 'or {"list": [[dx, dy], ...]}, one or the other'),
    ({"range": [-2, 2]}, "shifts", 'give shifts as {"dx": [min, max], "dy": [min, max], "step": 1}'),
    ([[1, 0]], "shifts", 'give shifts as {"dx": [min, max], "dy": [min, max], "step": 1}'),
])
def test_a_malformed_grid_names_its_field_and_the_two_shapes(erin, shifts, field, needle):
    body = problem(erin.post("/v1/evaluations", json={"model_id": "m", "dataset_id": "digits", "shifts": shifts}), 400)
    assert [e["field"] for e in body["errors"]] == [field], body
    assert needle in body["errors"][0]["message"] and needle in body["detail"]
    assert not any(word in body["detail"] for word in INTERNALS[:2] + INTERNALS[3:]), body["detail"]


def upload(erin, path, input_spec) -> object:
    with path.open("rb") as handle:
        return erin.post("/v1/models", files={"file": handle}, data={
            "name": "stats", "format": "torchscript", "input": json.dumps(input_spec)})


@pytest.mark.parametrize("mean,std,needle", [
    ([127.5], [127.5], "mean [127.5] is outside [0, 1]"),
    ([0.5], [58.0], "std [58.0] is outside (0, 1]"),
    ([-0.5], [0.5], "mean [-0.5] is outside [0, 1]"),
])
def test_statistics_on_the_0_255_scale_are_refused(erin, digits_model_file, mean, std, needle):
    body = problem(upload(erin, digits_model_file, {**DIGITS_INPUT, "mean": mean, "std": std}), 422)
    assert needle in body["detail"]
    assert "divided by 255" in body["detail"] and "divide statistics measured on 0-255 pixels by 255" in body["detail"]


def test_statistics_on_the_0_1_scale_are_accepted(erin, digits_model_file):
    mnist = upload(erin, digits_model_file, {**DIGITS_INPUT, "mean": 0.1307, "std": 0.3081})
    assert mnist.status_code == 201, mnist.text
    assert mnist.json()["input"]["mean"] == [0.1307] and mnist.json()["input"]["std"] == [0.3081]


def test_too_many_statistics_for_the_channels(erin, digits_model_file):
    body = problem(upload(erin, digits_model_file, {**DIGITS_INPUT, "mean": [0.5, 0.5, 0.5]}), 422)
    assert "mean has 3 values but the model declares 1 channel(s)" in body["detail"]
    assert "one value per channel (1) or a single value for all" in body["detail"]
    assert "1 or 1" not in body["detail"]


@pytest.mark.parametrize("route,fields", [
    ("/v1/models", {"name": "m", "format": "torchscript", "input": json.dumps(DIGITS_INPUT)}),
    ("/v1/datasets", {"name": "d"}),
])
def test_a_file_sent_as_text_says_to_use_the_at_sign(erin, route, fields):
    # What `curl -F file=model.pt` (no @) sends: the file's name as a text field.
    body = problem(erin.post(route, files={k: (None, v) for k, v in {**fields, "file": "model.pt"}.items()}), 400)
    assert "-F file=@PATH" in body["detail"] and "Extra inputs" not in body["detail"]
    assert body["errors"] == [{"field": "file", "message": "sent as text; send it as a file part"}]


@pytest.mark.parametrize("shape", [(4, 1, 8, 8), (4, 3, 32, 32)])
def test_a_channels_first_npz_says_how_to_transpose(erin, tmp_path, shape):
    path = tmp_path / "nchw.npz"
    np.savez(path, images=np.zeros(shape, np.uint8), labels=np.arange(4))
    with path.open("rb") as handle:
        body = problem(erin.post("/v1/datasets", files={"file": handle}, data={"name": "nchw"}), 422)
    assert "channels-first (N×C×H×W)" in body["detail"] and "images.transpose(0, 2, 3, 1)" in body["detail"]


def run_cli(pg_stack, token: str, *args: str) -> subprocess.CompletedProcess:
    env = {**pg_stack.env, "SHIFTSCORE_URL": pg_stack.url, "SHIFTSCORE_TOKEN": token}
    return subprocess.run([sys.executable, "-m", "shiftscore.cli", "eval", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_takes_a_negative_range_without_equals(pg_stack, erin, ready_model):
    token = erin.headers["Authorization"].removeprefix("Bearer ")
    run = run_cli(pg_stack, token, "--model-id", ready_model["id"], "--dx", "-2:2", "--dy", "-1:0",
                  "--max-samples", "40", "--json", "--quiet")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["evaluation"]["request"]["shifts"] == {"dx": [-2, 2], "dy": [-1, 0], "step": 1}
    half = run_cli(pg_stack, token, "--model-id", ready_model["id"], "--dx", "-2")
    assert half.returncode == 2 and "--dx needs MIN:MAX, e.g. --dx -2:2; got '-2'" in half.stderr
    assert "expected one argument" not in half.stderr


def test_cli_input_hint_keeps_the_normalization(pg_stack, erin, digits_model_file):
    token = erin.headers["Authorization"].removeprefix("Bearer ")
    missing = run_cli(pg_stack, token, str(digits_model_file))
    assert missing.returncode == 2
    hint = missing.stderr.split("--input '", 1)[1].split("'", 1)[0]
    assert {"mean", "std"} <= set(json.loads(hint))  # following the hint never drops normalization
    assert "divided by 255 to [0, 1]" in missing.stderr and "mean 0 and std 1" in missing.stderr
    help_text = subprocess.run([sys.executable, "-m", "shiftscore.cli", "eval", "--help"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout
    assert "divided by 255 to [0," in " ".join(help_text.split())
    wrong = run_cli(pg_stack, token, str(digits_model_file), "--input",
                    json.dumps({**DIGITS_INPUT, "mean": [127.5], "std": [127.5]}))
    assert wrong.returncode == 3 and "by 255" in wrong.stderr
