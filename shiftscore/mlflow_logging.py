"""Log a succeeded evaluation to MLflow: summary as metrics, sweep as params, table and heatmaps as artifacts.

MLflow is imported only when logging (pip install 'shiftscore[mlflow]'), so the client stays light.
The run goes to MLFLOW_TRACKING_URI (or whatever mlflow.set_tracking_uri chose): the active run if
there is one, else a new run that is ended here.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shiftscore.client import Client

PREFIX = "shiftscore"
ARTIFACT_DIR = "shiftscore"
HEATMAPS = ("accuracy", "agreement")
# MLflow refuses longer param values (an explicit shift list can be long); the full sweep is in evaluation.json.
MAX_PARAM_CHARS = 6000
INSTALL_HINT = "logging to MLflow needs the mlflow client: pip install 'shiftscore[mlflow]' (or mlflow-skinny)"


def require_mlflow() -> None:
    """Raise ImportError with the install line if the mlflow client is missing."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ImportError(INSTALL_HINT) from None


def metrics_of(evaluation: Mapping[str, Any]) -> dict[str, float]:
    """The summary's numbers as MLflow metrics (`shiftscore/consistency`, …); None (no flip rate) is left out."""
    return {f"{PREFIX}/{key}": float(value) for key, value in (evaluation.get("summary") or {}).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}", item, out)
    elif value is not None:
        text = value if isinstance(value, str) else json.dumps(value)
        out[prefix] = text if len(text) <= MAX_PARAM_CHARS else text[:MAX_PARAM_CHARS - 1] + "…"


def params_of(evaluation: Mapping[str, Any], model: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The sweep as it was requested (`shiftscore.shifts.dx`, `shiftscore.padding`, …) and what it names."""
    params: dict[str, str] = {}
    _flatten(PREFIX, dict(evaluation.get("request") or {}), params)
    params[f"{PREFIX}.evaluation_id"] = evaluation["id"]
    params[f"{PREFIX}.sweep_key"] = str(evaluation.get("sweep_key"))
    if model is not None:
        params[f"{PREFIX}.model_name"] = str(model.get("name"))
        params[f"{PREFIX}.model_version"] = str(model.get("version"))
    return params


def log_evaluation(client: Client, evaluation: Mapping[str, Any] | str) -> str:
    """Log a succeeded evaluation (its record or id) to MLflow; returns the run id."""
    require_mlflow()
    import mlflow
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    record = client.get_evaluation(evaluation if isinstance(evaluation, str) else evaluation["id"])
    if record["status"] != "succeeded":
        raise ValueError(f"evaluation {record['id']} is {record['status']}; only a succeeded one has results to log")
    model = client.get_model(record["model_id"])
    active = mlflow.active_run()
    run = active or mlflow.start_run(run_name=f"shiftscore {model['name']} v{model['version']} {record['id'][:8]}")
    run_id = run.info.run_id
    tracking = MlflowClient()
    try:
        now = int(time.time() * 1000)
        tracking.log_batch(
            run_id,
            metrics=[Metric(key, value, now, 0) for key, value in metrics_of(record).items()],
            params=[Param(key, value) for key, value in params_of(record, model).items()],
            tags=[RunTag(f"{PREFIX}.url", client.url), RunTag(f"{PREFIX}.evaluation_id", record["id"])],
        )
        with tempfile.TemporaryDirectory(prefix="shiftscore-mlflow-") as folder:
            out = Path(folder)
            (out / "shifts.csv").write_text(client.shifts_csv(record["id"]))
            (out / "evaluation.json").write_text(json.dumps(record, indent=2))
            for metric in HEATMAPS:
                (out / f"heatmap_{metric}.png").write_bytes(client.heatmap_png(record["id"], metric))
            tracking.log_artifacts(run_id, folder, ARTIFACT_DIR)
    except BaseException:
        if active is None:
            mlflow.end_run("FAILED")
        raise
    if active is None:
        mlflow.end_run()
    return run_id
