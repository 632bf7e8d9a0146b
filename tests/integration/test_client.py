"""The Python client and `shiftscore eval` end to end, against the real API and worker."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import requests

from shiftscore import AuthError, Client, EvaluationFailed, ModelInvalid, NotFound, ValidationError
from shiftscore.eval_command import EXIT_BELOW_THRESHOLD, EXIT_FAILED, EXIT_OK, EXIT_SERVICE, EXIT_USAGE
from tests.models import DIGITS_INPUT, digits_arrays
from tests.stack import ROOT

pytestmark = pytest.mark.integration
GRID = {"dx": [-1, 1], "dy": [-1, 1], "step": 1}


@pytest.fixture(scope="module")
def token(pg_stack) -> str:
    return pg_stack.token("client-user")


@pytest.fixture(scope="module")
def client(pg_stack, token) -> Client:
    return Client(pg_stack.url, token)


@pytest.fixture(scope="module")
def ready_model(client, digits_model_file) -> dict:
    model = client.upload_model(digits_model_file, input=DIGITS_INPUT, name="client-digits", wait=True)
    assert model["status"] == "ready" and model["num_outputs"] == 10
    return model


def run_cli(pg_stack, token: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**pg_stack.env, "SHIFTSCORE_URL": pg_stack.url, "SHIFTSCORE_TOKEN": token, **(env or {})}
    return subprocess.run([sys.executable, "-m", "shiftscore.cli", "eval", *args], env=environment, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_client_and_cli_import_neither_torch_nor_flask():
    code = ("import sys, shiftscore, shiftscore.cli, shiftscore.eval_command\n"
            "from shiftscore import Client\n"
            "heavy = {'torch', 'flask', 'pydantic', 'sqlalchemy', 'celery', 'numpy', 'pandas', 'mlflow'} & set(sys.modules)\n"
            "print(sorted(heavy))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_submit_wait_with_progress_and_results_as_plain_data(pg_stack, token, client, ready_model):
    seen: list[dict] = []
    evaluation = client.submit(ready_model["id"], "digits", shifts={"dx": [-2, 2], "dy": [-2, 2]},
                               padding="reflect", max_samples=600, seed=1, tags=["client"])
    assert evaluation["status"] == "queued"
    done = client.wait(evaluation["id"], progress=seen.append, poll_interval=0.05, timeout=120)
    assert done["status"] == "succeeded"
    assert seen[-1] == done and len(seen) >= 2
    progress = [e["progress"]["done"] for e in seen]
    assert progress == sorted(progress) and progress[-1] == done["progress"]["total"] == 600 * 25

    results = client.results(done["id"], examples=5)
    raw = requests.Session()
    raw.headers["Authorization"] = f"Bearer {token}"
    for path, rows in (("shifts", results.shifts), ("classes", results.classes), ("examples?limit=5", results.examples)):
        assert rows == raw.get(f"{pg_stack.url}/v1/evaluations/{done['id']}/{path}", timeout=10).json()["items"]
    assert results.summary == done["summary"] and results.summary["num_shifts"] == 25
    assert [(r["dx"], r["dy"]) for r in results.shifts] == [(dx, dy) for dy in range(-2, 3) for dx in range(-2, 3)]
    mean = sum(r["accuracy"] for r in results.shifts) / 25
    assert mean == pytest.approx(results.summary["mean_accuracy"], abs=1e-12)
    assert client.shifts_csv(done["id"]).splitlines()[0] == "dx,dy,accuracy,agreement,correct,n"
    assert done["id"] in {e["id"] for e in client.list_evaluations(tag="client")}

    pandas = pytest.importorskip("pandas")
    frame = results.shifts_frame()
    assert isinstance(frame, pandas.DataFrame) and len(frame) == 25
    assert frame["accuracy"].mean() == pytest.approx(results.summary["mean_accuracy"], abs=1e-12)
    assert list(results.classes_frame()["label"]) == list(range(10))


def test_submit_right_after_upload_waits_out_the_validation(client, digits_model_file, tmp_path):
    images, labels = digits_arrays()
    path = tmp_path / "first-200.npz"
    np.savez(path, images=images[:200], labels=labels[:200])
    dataset = client.upload_dataset(path, name="first-200")
    assert dataset["num_samples"] == 200 and client.get_dataset(dataset["id"])["name"] == "first-200"
    model = client.upload_model(digits_model_file, input=DIGITS_INPUT)  # not waited for: still validating
    results = client.evaluate(model["id"], dataset["id"], shifts={"list": [[1, 0], [0, 1]]}, timeout=120)
    assert results.summary["num_samples"] == 200 and results.summary["num_shifts"] == 2
    assert results.summary["flip_rate"] is None  # an explicit list has no grid neighbours
    assert client.get_model(model["id"])["status"] == "ready"


def test_errors_are_typed_and_carry_the_problem(pg_stack, client, ready_model, tmp_path):
    with pytest.raises(NotFound) as missing:
        client.get_model("no-such-model")
    assert missing.value.status == 404 and missing.value.problem["title"] == "Not found"
    assert "no model with id or name 'no-such-model'" in missing.value.detail

    with pytest.raises(ValidationError) as bad:
        client.submit(ready_model["id"], "digits", shifts=GRID, padding="sideways")
    assert bad.value.status == 400 and any(e["field"] == "padding" for e in bad.value.errors)
    with pytest.raises(ValidationError) as unfit:
        client.submit(ready_model["id"], "digits", shifts={"dx": [-8, 8], "dy": [0, 0]})
    assert unfit.value.status == 422 and "|dx| < 8" in unfit.value.detail

    with pytest.raises(AuthError) as denied:
        Client(pg_stack.url, "not-a-token").list_models()
    assert denied.value.status == 401 and denied.value.problem["type"] == "/problems/unauthorized"

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a model")
    with pytest.raises(ModelInvalid) as invalid:
        client.upload_model(junk, input=DIGITS_INPUT, wait=True, timeout=60)
    assert invalid.value.model["status"] == "invalid" and invalid.value.detail

    evaluation = client.submit(ready_model["id"], "digits", shifts={"dx": [-3, 3], "dy": [-3, 3]})
    client.cancel(evaluation["id"])
    with pytest.raises(EvaluationFailed) as cancelled:
        client.wait(evaluation["id"], timeout=60, poll_interval=0.05)
    assert cancelled.value.evaluation["status"] == "cancelled"


def test_cli_gates_a_pipeline_on_thresholds(pg_stack, token, digits_model_file):
    sweep = ["--max-shift", "2", "--max-samples", "300", "--seed", "2"]
    first = run_cli(pg_stack, token, str(digits_model_file), "--input", json.dumps(DIGITS_INPUT),
                    *sweep, "--json")
    assert first.returncode == EXIT_OK, first.stderr
    report = json.loads(first.stdout)
    summary = report["summary"]
    assert report["passed"] is True and report["gates"] == [] and report["evaluation"]["status"] == "succeeded"
    assert (summary["num_samples"], summary["num_shifts"]) == (300, 25)
    assert 0 < summary["consistency"] < 1 and summary["clean_accuracy"] > 0.9
    assert "100%" in first.stderr and "img/s" in first.stderr  # tqdm's bar with its rate, on stderr only
    model_id = report["evaluation"]["model_id"]

    above = min(summary["consistency"] + 0.01, 1.0)
    failing = run_cli(pg_stack, token, "--model-id", model_id, *sweep, "--min-consistency", str(above),
                      "--min-worst-case", "0")
    assert failing.returncode == EXIT_BELOW_THRESHOLD, failing.stderr
    assert "consistency" in failing.stdout and "BELOW" in failing.stdout
    assert f"{summary['consistency']:.4f}" in failing.stdout  # same sweep, same numbers
    assert "below --min-consistency" in failing.stderr

    passing = run_cli(pg_stack, token, "--model-id", model_id, *sweep, "--json", "--quiet",
                      "--min-consistency", str(summary["consistency"]),
                      "--min-worst-case", str(summary["worst_case_accuracy"]),
                      "--min-mean-accuracy", str(summary["mean_accuracy"] - 0.05))
    assert passing.returncode == EXIT_OK, passing.stderr
    gates = json.loads(passing.stdout)["gates"]
    assert [g["metric"] for g in gates] == ["consistency", "worst_case_accuracy", "mean_accuracy"]
    assert all(g["passed"] for g in gates) and passing.stderr == ""

    strict = run_cli(pg_stack, token, "--model-id", model_id, *sweep, "--json", "--quiet",
                     "--min-mean-accuracy", str(min(summary["mean_accuracy"] + 0.01, 1.0)))
    assert strict.returncode == EXIT_BELOW_THRESHOLD
    assert json.loads(strict.stdout)["gates"][0]["passed"] is False


def test_cli_exit_codes_for_usage_service_and_failures(pg_stack, token, tmp_path):
    no_token = run_cli(pg_stack, "", "--model-id", "x", env={"SHIFTSCORE_TOKEN": ""})
    assert no_token.returncode == EXIT_USAGE and "SHIFTSCORE_TOKEN" in no_token.stderr
    no_file = run_cli(pg_stack, token, str(tmp_path / "missing.pt"), "--input", "{}")
    assert no_file.returncode == EXIT_USAGE and "no such model file" in no_file.stderr
    bad_gate = run_cli(pg_stack, token, "--model-id", "x", "--min-consistency", "1.5")
    assert bad_gate.returncode == EXIT_USAGE
    bad_flag = run_cli(pg_stack, token, "--model-id", "x", "--min-consistency", "high")
    assert bad_flag.returncode == EXIT_USAGE

    unknown = run_cli(pg_stack, token, "--model-id", "no-such-model", "--json")
    assert unknown.returncode == EXIT_SERVICE
    assert json.loads(unknown.stdout)["error"]["status"] == 404 and "no model" in unknown.stderr
    unreachable = run_cli(pg_stack, token, "--model-id", "x", "--url", "http://127.0.0.1:9")
    assert unreachable.returncode == EXIT_SERVICE and "could not reach" in unreachable.stderr

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model at all")
    invalid = run_cli(pg_stack, token, str(junk), "--input", json.dumps(DIGITS_INPUT), "--json")
    assert invalid.returncode == EXIT_FAILED, invalid.stderr
    assert json.loads(invalid.stdout)["passed"] is False and "invalid" in invalid.stderr.lower()
