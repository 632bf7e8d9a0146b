"""Client.log_to_mlflow and `shiftscore eval --mlflow` against a real `mlflow server`, read back with MlflowClient.

The server is the full `mlflow` from .venv-mlflow (scripts/test makes it), or the `mlflow` executable
named by SHIFTSCORE_MLFLOW_SERVER; the tests themselves use the `mlflow-skinny` client of the test extra.
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import requests
from mlflow.tracking import MlflowClient

from shiftscore import Client
from tests.integration.test_client import run_cli
from tests.stack import ROOT
from tests.models import DIGITS_INPUT

pytestmark = pytest.mark.integration

SERVER = Path(os.environ.get("SHIFTSCORE_MLFLOW_SERVER", ROOT / ".venv-mlflow" / "bin" / "mlflow"))
GRID = {"dx": [-1, 1], "dy": [-1, 0], "step": 1}
ARTIFACTS = {"shiftscore/shifts.csv", "shiftscore/evaluation.json", "shiftscore/heatmap_accuracy.png",
             "shiftscore/heatmap_agreement.png"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> Iterator[str]:
    """A real MLflow tracking server: SQLite backend, artifacts proxied to a temp folder."""
    assert SERVER.is_file(), (f"no MLflow server at {SERVER}: run scripts/test (it makes .venv-mlflow), "
                              "or point SHIFTSCORE_MLFLOW_SERVER at an `mlflow` executable")
    home = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    log = (home / "server.log").open("w")
    server = subprocess.Popen(
        [str(SERVER), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}", "--artifacts-destination", str(home / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, cwd=home)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (home / "server.log").read_text()[-3000:]
            try:
                if requests.get(uri + "/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, (home / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        yield uri
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def tracking(tracking_uri) -> Iterator[MlflowClient]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        mlflow.set_tracking_uri(tracking_uri)
        yield MlflowClient(tracking_uri)
        mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def token(pg_stack) -> str:
    return pg_stack.token("mlflow-user")


@pytest.fixture(scope="module")
def client(pg_stack, token) -> Client:
    return Client(pg_stack.url, token)


@pytest.fixture(scope="module")
def evaluation(client, digits_model_file) -> dict:
    model = client.upload_model(digits_model_file, input=DIGITS_INPUT, name="mlflow-digits", wait=True)
    submitted = client.submit(model["id"], "digits", shifts=GRID, padding="reflect", max_samples=300, seed=3)
    return client.wait(submitted["id"], timeout=120)


def _artifact_paths(tracking: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found: set[str] = set()
    for item in tracking.list_artifacts(run_id, path):
        found |= _artifact_paths(tracking, run_id, item.path) if item.is_dir else {item.path}
    return found


def _check_run(tracking: MlflowClient, run_id: str, client: Client, evaluation: dict, tmp_path: Path) -> None:
    run = tracking.get_run(run_id)
    summary = evaluation["summary"]
    metrics = {k: v for k, v in run.data.metrics.items() if k.startswith("shiftscore/")}
    assert metrics == {f"shiftscore/{k}": float(v) for k, v in summary.items() if v is not None}
    assert metrics["shiftscore/num_shifts"] == 6 and metrics["shiftscore/num_samples"] == 300
    params = run.data.params
    assert params["shiftscore.shifts.dx"] == "[-1.0, 1.0]" and params["shiftscore.shifts.dy"] == "[-1.0, 0.0]"
    assert params["shiftscore.padding"] == "reflect" and params["shiftscore.max_samples"] == "300"
    assert params["shiftscore.seed"] == "3" and params["shiftscore.dataset_id"] == evaluation["request"]["dataset_id"]
    assert params["shiftscore.evaluation_id"] == evaluation["id"]
    assert params["shiftscore.model_name"] == "mlflow-digits" and params["shiftscore.model_version"] == "1"
    assert params["shiftscore.sweep_key"] == evaluation["sweep_key"]
    assert run.data.tags["shiftscore.evaluation_id"] == evaluation["id"]

    assert _artifact_paths(tracking, run_id) == ARTIFACTS
    folder = Path(tracking.download_artifacts(run_id, "shiftscore", str(tmp_path)))
    table = (folder / "shifts.csv").read_text()
    assert table == client.shifts_csv(evaluation["id"])
    rows = list(csv.DictReader(io.StringIO(table)))
    assert {(float(r["dx"]), float(r["dy"])) for r in rows} == {(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0)}
    for metric in ("accuracy", "agreement"):
        png = (folder / f"heatmap_{metric}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and png == client.heatmap_png(evaluation["id"], metric)
    assert json.loads((folder / "evaluation.json").read_text())["summary"] == summary


def test_log_to_mlflow_starts_and_ends_a_run(tracking, client, evaluation, tmp_path):
    assert mlflow.active_run() is None
    run_id = client.log_to_mlflow(evaluation)
    assert mlflow.active_run() is None
    run = tracking.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name.startswith("shiftscore mlflow-digits v1")
    _check_run(tracking, run_id, client, evaluation, tmp_path)


def test_log_to_mlflow_reuses_the_active_run(tracking, client, evaluation, tmp_path):
    with mlflow.start_run(run_name="training") as run:
        mlflow.log_metric("train_loss", 0.25)
        assert client.log_to_mlflow(evaluation["id"]) == run.info.run_id
        assert mlflow.active_run().info.run_id == run.info.run_id
        assert tracking.get_run(run.info.run_id).info.status == "RUNNING"
    logged = tracking.get_run(run.info.run_id)
    assert logged.info.status == "FINISHED" and logged.data.metrics["train_loss"] == 0.25
    _check_run(tracking, run.info.run_id, client, evaluation, tmp_path)


def test_eval_cli_logs_to_mlflow(pg_stack, token, tracking, tracking_uri, evaluation, client, tmp_path):
    out = run_cli(pg_stack, token, "--model-id", "mlflow-digits", "--dx", "-1:1", "--dy", "-1:0",
                  "--padding", "reflect", "--max-samples", "300", "--seed", "3", "--mlflow", "--json",
                  env={"MLFLOW_TRACKING_URI": tracking_uri})
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    run = tracking.get_run(report["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    _check_run(tracking, run.info.run_id, client, report["evaluation"], tmp_path)
    assert report["summary"] == evaluation["summary"]  # same model, data and sweep: the same figures


def test_eval_cli_says_when_mlflow_is_unreachable(pg_stack, token, evaluation):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
        out = run_cli(pg_stack, token, "--model-id", "mlflow-digits", "--max-shift", "0", "--max-samples", "50",
                      "--mlflow", env={"MLFLOW_TRACKING_URI": dead, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"})
    assert out.returncode == 3, out.stderr
    assert "could not log to MLflow" in out.stderr and dead in out.stderr
