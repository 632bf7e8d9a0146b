"""The Python client of the ShiftScore REST API; it needs only `requests` (pandas is optional).

    from shiftscore import Client

    client = Client("http://127.0.0.1:8000", token)       # or SHIFTSCORE_URL / SHIFTSCORE_TOKEN
    # mean and std on the [0, 1] scale: pixels are divided by 255 before (x - mean) / std
    model = client.upload_model("model.pt", input={"channels": 1, "height": 8, "width": 8,
                                                   "mean": [0.5], "std": [0.5]}, wait=True)
    evaluation = client.submit(model["id"], "digits", shifts={"dx": [-3, 3], "dy": [-3, 3]})
    done = client.wait(evaluation["id"], progress=lambda e: print(e["progress"]))
    results = client.results(done["id"])                  # plain dicts and lists
    frame = results.shifts_frame()                        # a pandas DataFrame, if pandas is installed
    run_id = client.log_to_mlflow(done)                   # to MLFLOW_TRACKING_URI; pip install 'shiftscore[mlflow]'
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from shiftscore.multipart import MultipartBody

Json = dict[str, Any]
Progress = Callable[[Json], None]
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
# Bytes per second the service stores an upload at, at the slowest we wait for (its answer comes after).
UPLOAD_STORE_RATE = 1 << 20


class ShiftScoreError(Exception):
    """An error from ShiftScore; `problem` holds the RFC 9457 problem details the API sent."""

    def __init__(self, problem: Mapping[str, Any], response: requests.Response | None = None) -> None:
        self.problem: Json = dict(problem)
        self.response = response
        self.status: int | None = self.problem.get("status")
        self.title: str = self.problem.get("title", "error")
        self.detail: str = self.problem.get("detail", "")
        self.type: str = self.problem.get("type", "about:blank")
        self.errors: list[Json] = list(self.problem.get("errors") or [])
        super().__init__(f"{self.status} {self.title}: {self.detail}" if self.status else self.detail)


class ValidationError(ShiftScoreError):
    """The request was refused as malformed (400) or not fitting the model or dataset (422)."""


class AuthError(ShiftScoreError):
    """The bearer token is missing or unknown (401), or not allowed (403)."""


class NotFound(ShiftScoreError):
    """No such model, dataset or evaluation for this tenant (404)."""


class Conflict(ShiftScoreError):
    """The resource is not in a state for this (409): still validating, not succeeded yet, finished."""


class ServerError(ShiftScoreError):
    """The service failed (5xx) or is unavailable."""


class ConnectionFailed(ShiftScoreError):
    """The service could not be reached."""


class ModelInvalid(ShiftScoreError):
    """The uploaded model failed validation; `model` is its record, `detail` says why."""

    def __init__(self, model: Json) -> None:
        self.model = model
        super().__init__({"title": "Model invalid", "detail": model.get("error") or "the model is invalid"})


class DatasetInvalid(ShiftScoreError):
    """The uploaded dataset could not be ingested; `dataset` is its record, `detail` says why."""

    def __init__(self, dataset: Json) -> None:
        self.dataset = dataset
        super().__init__({"title": "Dataset invalid", "detail": dataset.get("error") or "the dataset is invalid"})


class EvaluationFailed(ShiftScoreError):
    """The evaluation ended failed or cancelled; `evaluation` is its record."""

    def __init__(self, evaluation: Json) -> None:
        self.evaluation = evaluation
        error = evaluation.get("error") or {}
        detail = error.get("detail") or f"the evaluation was {evaluation.get('status')}"
        super().__init__({"title": f"Evaluation {evaluation.get('status')}", "detail": detail,
                          "type": error.get("type", "about:blank")})


class WaitTimeout(ShiftScoreError):
    """Waiting gave up before the model or evaluation finished; `last` is what was seen last."""

    def __init__(self, what: str, timeout: float, last: Json) -> None:
        self.last = last
        super().__init__({"title": "Timed out", "detail": f"{what} still {last.get('status')} after {timeout:g} s"})


_BY_STATUS: dict[int, type[ShiftScoreError]] = {
    400: ValidationError, 401: AuthError, 403: AuthError, 404: NotFound, 409: Conflict, 422: ValidationError,
}


def error_for(response: requests.Response) -> ShiftScoreError:
    """The typed exception for an error response, carrying its problem details."""
    try:
        problem = response.json()
        if not isinstance(problem, dict):
            raise ValueError
    except ValueError:
        problem = {"title": response.reason or "error", "detail": response.text[:500]}
    problem.setdefault("status", response.status_code)
    kind = _BY_STATUS.get(response.status_code, ServerError if response.status_code >= 500 else ShiftScoreError)
    return kind(problem, response)


def _frame(rows: list[Json]) -> Any:
    try:
        import pandas
    except ImportError:
        raise ImportError("DataFrames need pandas: pip install pandas (the plain lists work without it)") from None
    return pandas.DataFrame(rows)


@dataclass(frozen=True)
class Results:
    """A succeeded evaluation's results as plain data, and as DataFrames on request."""

    evaluation: Json
    shifts: list[Json]
    classes: list[Json]
    examples: list[Json]

    @property
    def summary(self) -> Json:
        return self.evaluation["summary"]

    def shifts_frame(self) -> Any:
        """Per-shift rows as a pandas DataFrame (columns dx, dy, accuracy, agreement, correct, n)."""
        return _frame(self.shifts)

    def classes_frame(self) -> Any:
        """Per-class rows as a pandas DataFrame."""
        return _frame(self.classes)

    def examples_frame(self) -> Any:
        """The most fragile samples as a pandas DataFrame."""
        return _frame(self.examples)


class Client:
    """A tenant's view of one ShiftScore service."""

    def __init__(self, url: str | None = None, token: str | None = None, *, timeout: float = 60.0,
                 session: requests.Session | None = None) -> None:
        url = url or os.environ.get("SHIFTSCORE_URL")
        token = token or os.environ.get("SHIFTSCORE_TOKEN")
        if not url:
            raise ValueError("pass the service URL or set SHIFTSCORE_URL (e.g. http://127.0.0.1:8000)")
        if not token:
            raise ValueError("pass a token or set SHIFTSCORE_TOKEN (create one with 'shiftscore token create TENANT')")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.session.headers.setdefault("User-Agent", "shiftscore-client")

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        try:
            response = self.session.request(method, self.url + path, **kwargs)
        except requests.RequestException as exc:
            raise ConnectionFailed({"title": "Connection failed",
                                    "detail": f"could not reach {self.url}: {exc}"}) from exc
        if response.status_code >= 400:
            raise error_for(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    def _upload(self, route: str, fields: Mapping[str, str], path: Path) -> Json:
        """POST `fields` and the file at `path` as its multipart 'file' part, streamed from disk.

        After the body the API stores the file before it answers, at roughly the speed it
        received it: the wait for the answer grows with the file (UPLOAD_STORE_RATE at the least).
        """
        with path.open("rb") as handle:
            body = MultipartBody(fields, "file", path.name, handle)
            wait = self.timeout + len(body) / UPLOAD_STORE_RATE
            return self._json("POST", route, data=body, headers={"Content-Type": body.content_type},
                              timeout=(self.timeout, wait))

    def _pages(self, path: str, params: Mapping[str, Any]) -> Iterator[Json]:
        query = {k: v for k, v in params.items() if v is not None}
        while True:
            page = self._json("GET", path, params=query)
            yield from page["items"]
            if not page.get("next_cursor"):
                return
            query["cursor"] = page["next_cursor"]

    # Models

    def upload_model(self, path: str | os.PathLike[str], *, input: Mapping[str, Any], format: str = "torchscript",
                     name: str | None = None, task: str = "classification", architecture: str | None = None,
                     architecture_options: Mapping[str, Any] | None = None, wait: bool = False,
                     timeout: float = 300.0) -> Json:
        """Upload model weights; with `wait`, return once validated (raises ModelInvalid if it is not).

        `input` is {"channels", "height", "width", "mean", "std"}; pixels are divided by 255 to [0, 1]
        before (x - mean) / std, so mean and std are on that scale (the service refuses 0-255 ones).
        """
        path = Path(path)
        fields = {"name": name or path.stem, "format": format, "task": task, "input": json.dumps(dict(input))}
        if architecture is not None:
            fields["architecture"] = architecture
            fields["architecture_options"] = json.dumps(dict(architecture_options or {}))
        model = self._upload("/v1/models", fields, path)
        return self.wait_model(model["id"], timeout=timeout) if wait else model

    def wait_model(self, model_id: str, *, timeout: float = 300.0, poll_interval: float = 0.2,
                   check: bool = True) -> Json:
        """Poll a model until it is `ready` or `invalid`; raise ModelInvalid for `invalid` when `check`."""
        model = self._poll(f"/v1/models/{model_id}", lambda m: m["status"] != "validating",
                           f"model {model_id}", timeout, poll_interval, None)
        if check and model["status"] == "invalid":
            raise ModelInvalid(model)
        return model

    def get_model(self, model_id: str) -> Json:
        """A model by id, or by name: its latest ready version."""
        return self._json("GET", f"/v1/models/{model_id}")

    def list_models(self, name: str | None = None) -> list[Json]:
        """Every model, newest first; with `name`, every version of that name."""
        return list(self._pages("/v1/models", {"limit": 200, "name": name}))

    def delete_model(self, model_id: str) -> None:
        self._request("DELETE", f"/v1/models/{model_id}")

    def architectures(self) -> list[Json]:
        return self._json("GET", "/v1/architectures")["items"]

    # Datasets

    def upload_dataset(self, path: str | os.PathLike[str], name: str | None = None, *,
                       preprocess: Mapping[str, Any] | None = None, wait: bool = True,
                       timeout: float = 600.0) -> Json:
        """Upload an NPZ with `images` and `labels`, or a .zip / .tar.gz image folder (with an optional
        `preprocess`, e.g. {"resize": 256, "center_crop": 224}); a worker ingests it, and with `wait`
        this returns once it is `ready` (DatasetInvalid when it is `invalid`)."""
        path = Path(path)
        fields = {"name": name or path.stem}
        if preprocess is not None:
            fields["preprocess"] = json.dumps(dict(preprocess))
        dataset = self._upload("/v1/datasets", fields, path)
        return self.wait_dataset(dataset["id"], timeout=timeout) if wait else dataset

    def wait_dataset(self, dataset_id: str, *, timeout: float = 600.0, poll_interval: float = 0.2,
                     check: bool = True) -> Json:
        """Poll a dataset until it is `ready` or `invalid`; raise DatasetInvalid for `invalid` when `check`."""
        dataset = self._poll(f"/v1/datasets/{dataset_id}", lambda d: d["status"] != "processing",
                             f"dataset {dataset_id}", timeout, poll_interval, None)
        if check and dataset["status"] == "invalid":
            raise DatasetInvalid(dataset)
        return dataset

    def get_dataset(self, dataset_id: str) -> Json:
        """A dataset by id, or by name."""
        return self._json("GET", f"/v1/datasets/{dataset_id}")

    def list_datasets(self, name: str | None = None) -> list[Json]:
        return list(self._pages("/v1/datasets", {"limit": 200, "name": name}))

    def delete_dataset(self, dataset_id: str) -> None:
        self._request("DELETE", f"/v1/datasets/{dataset_id}")

    # Evaluations

    def submit(self, model_id: str, dataset_id: str = "digits", *, shifts: Mapping[str, Any] | None = None,
               angle: Mapping[str, Any] | None = None, scale: Mapping[str, Any] | None = None,
               brightness: Mapping[str, Any] | None = None,
               padding: str = "zeros", fill: float | None = None, max_samples: int | None = None,
               seed: int | None = None, tags: list[str] | None = None, idempotency_key: str | None = None,
               model_timeout: float = 300.0, backend: str | None = None, early_exit: bool | None = None) -> Json:
        """Submit a sweep; `shifts` is {"dx": [min, max], "dy": [min, max], "step": 1} or {"list": [[dx, dy], …]};
        `angle`, `scale`, `brightness` are each {"range": [min, max], "step": s} or {"list": [v, …]}, and the
        grid is the product of the axes given (at least one). `backend="torch"` forces eager PyTorch;
        `early_exit=True` measures only the worst case (and clean accuracy), stopping each sample early.

        A model still being validated is waited for (the API answers 409 until then).
        """
        body: Json = {"model_id": model_id, "dataset_id": dataset_id, "padding": padding}
        axes = (("shifts", shifts), ("angle", angle), ("scale", scale), ("brightness", brightness))
        body.update({key: dict(value) for key, value in axes if value is not None})
        optional = (("fill", fill), ("max_samples", max_samples), ("seed", seed), ("tags", tags),
                    ("backend", backend), ("early_exit", early_exit))
        for key, value in optional:
            if value is not None:
                body[key] = value
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        try:
            return self._json("POST", "/v1/evaluations", json=body, headers=headers)
        except Conflict:
            if self.get_model(model_id)["status"] != "validating":
                raise
        self.wait_model(model_id, timeout=model_timeout)
        return self._json("POST", "/v1/evaluations", json=body, headers=headers)

    def get_evaluation(self, evaluation_id: str) -> Json:
        return self._json("GET", f"/v1/evaluations/{evaluation_id}")

    def list_evaluations(self, *, status: str | None = None, model_id: str | None = None,
                         model_name: str | None = None, dataset_id: str | None = None,
                         sweep_key: str | None = None, tag: str | None = None) -> list[Json]:
        """Evaluations newest first; `model_name` takes every version of that name."""
        return list(self._pages("/v1/evaluations", {
            "status": status, "model_id": model_id, "model_name": model_name, "dataset_id": dataset_id,
            "sweep_key": sweep_key, "tag": tag, "limit": 200}))

    def find_baseline(self, ref: str, evaluation: Mapping[str, Any]) -> Json:
        """The evaluation to compare `evaluation` with: the evaluation `ref`, or the newest succeeded
        evaluation of the model named `ref` (any version) on the same dataset and sweep, other than
        `evaluation` itself. Raises NotFound, or Conflict when `ref` does not compare."""
        try:
            baseline = self.get_evaluation(ref)
        except NotFound:
            page = self._json("GET", "/v1/evaluations", params={
                "model_name": ref, "status": "succeeded", "sweep_key": evaluation["sweep_key"], "limit": 2})
            found = [item for item in page["items"] if item["id"] != evaluation["id"]]
            if not found:
                raise NotFound({"title": "No baseline", "detail": (
                    f"'{ref}' is neither an evaluation id nor a model name with a succeeded evaluation on this "
                    "dataset and sweep (besides this one); evaluate the baseline model with the same flags "
                    "first, or give an evaluation id")}) from None
            return found[0]
        if baseline["status"] != "succeeded":
            raise Conflict({"title": "Baseline not succeeded",
                            "detail": f"the baseline evaluation {ref} is {baseline['status']}; give a succeeded one"})
        if baseline["sweep_key"] != evaluation["sweep_key"]:
            raise Conflict({"title": "Baseline does not compare", "detail": (
                f"the baseline evaluation {ref} swept another dataset or another sweep (grid, padding, fill, "
                "samples); compare with an evaluation of the same dataset and sweep")})
        return baseline

    def cancel(self, evaluation_id: str) -> Json:
        return self._json("POST", f"/v1/evaluations/{evaluation_id}/cancel")

    def wait(self, evaluation_id: str, *, progress: Progress | None = None, timeout: float | None = None,
             poll_interval: float = 0.5, check: bool = True) -> Json:
        """Poll until the evaluation finishes, calling `progress(evaluation)` on each poll.

        Raises EvaluationFailed if it failed or was cancelled (unless `check` is false), and
        WaitTimeout after `timeout` seconds.
        """
        evaluation = self._poll(f"/v1/evaluations/{evaluation_id}", lambda e: e["status"] in TERMINAL,
                                f"evaluation {evaluation_id}", timeout, poll_interval, progress)
        if check and evaluation["status"] != "succeeded":
            raise EvaluationFailed(evaluation)
        return evaluation

    def evaluate(self, model_id: str, dataset_id: str = "digits", *, progress: Progress | None = None,
                 timeout: float | None = None, **request: Any) -> Results:
        """Submit, wait and fetch the results in one call."""
        evaluation = self.submit(model_id, dataset_id, **request)
        self.wait(evaluation["id"], progress=progress, timeout=timeout)
        return self.results(evaluation["id"])

    def shifts(self, evaluation_id: str) -> list[Json]:
        """Every per-shift row, in grid order (following the pages)."""
        return list(self._pages(f"/v1/evaluations/{evaluation_id}/shifts", {}))

    def marginals(self, evaluation_id: str) -> list[Json]:
        """Accuracy and agreement against each axis the sweep named (`axis`, `value`, …), following the pages."""
        return list(self._pages(f"/v1/evaluations/{evaluation_id}/marginals", {}))

    def shifts_csv(self, evaluation_id: str) -> str:
        return self._request("GET", f"/v1/evaluations/{evaluation_id}/shifts", params={"format": "csv"}).text

    def report_html(self, evaluation_id: str) -> str:
        """The succeeded evaluation's report: one self-contained HTML document."""
        return self._request("GET", f"/v1/evaluations/{evaluation_id}/report.html").text

    def heatmap_png(self, evaluation_id: str, metric: str = "accuracy") -> bytes:
        """The evaluation's heatmap over its grid as PNG bytes (`accuracy`, `agreement` or `both`)."""
        return self._request("GET", f"/v1/evaluations/{evaluation_id}/heatmap.png", params={"metric": metric}).content

    def log_to_mlflow(self, evaluation: Mapping[str, Any] | str) -> str:
        """Log a succeeded evaluation to MLflow (MLFLOW_TRACKING_URI); returns the run id.

        The summary becomes metrics, the sweep params, the per-shift CSV and heatmaps artifacts under
        `shiftscore/`; an active run is reused, else a run is started and ended. Needs `shiftscore[mlflow]`.
        """
        from shiftscore.mlflow_logging import log_evaluation

        return log_evaluation(self, evaluation)

    def classes(self, evaluation_id: str) -> list[Json]:
        """Every per-class row, by label (following the pages)."""
        return list(self._pages(f"/v1/evaluations/{evaluation_id}/classes", {}))

    def examples(self, evaluation_id: str, limit: int = 20) -> list[Json]:
        """The `limit` most fragile samples the service kept, most flips first."""
        return list(itertools.islice(self._pages(f"/v1/evaluations/{evaluation_id}/examples", {"limit": limit}),
                                     limit))

    def results(self, evaluation_id: str, examples: int = 20) -> Results:
        """Everything a succeeded evaluation produced, as plain data."""
        return Results(self.get_evaluation(evaluation_id), self.shifts(evaluation_id),
                       self.classes(evaluation_id), self.examples(evaluation_id, examples))

    def _poll(self, path: str, done: Callable[[Json], bool], what: str, timeout: float | None,
              poll_interval: float, progress: Progress | None) -> Json:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            body = self._json("GET", path)
            if progress is not None:
                progress(body)
            if done(body):
                return body
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(what, timeout or 0.0, body)
            time.sleep(poll_interval)
