"""Per-tenant quotas through the real stack: queued and running sweeps, stored bytes.

A stack of its own with small quotas: SHIFTSCORE_QUOTA_QUEUED=2, SHIFTSCORE_QUOTA_RUNNING=1
and SHIFTSCORE_QUOTA_STORAGE of one and a half models.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from torch import nn

from tests.dataset_corpus import npz
from tests.integration.test_faults import Slowed, poll
from tests.models import DIGITS_INPUT, save_torchscript, trained_digits_cnn
from tests.stack import ApiSession, Stack, running_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    return trained_digits_cnn()


@pytest.fixture(scope="module")
def model_files(trained, tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("quota-models")
    return [save_torchscript(Slowed(trained, repeats), folder / f"m{repeats}.pt") for repeats in (4, 5)]


@pytest.fixture(scope="module")
def storage_quota(model_files) -> int:
    return max(p.stat().st_size for p in model_files) * 3 // 2


@pytest.fixture(scope="module")
def stack(tmp_path_factory, storage_quota) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("quota-stack"), workers=2, SHIFTSCORE_QUOTA_QUEUED="2",
                       SHIFTSCORE_QUOTA_RUNNING="1", SHIFTSCORE_QUOTA_STORAGE=str(storage_quota)) as stack:
        yield stack


def assert_quota_refusal(response: requests.Response, setting: str) -> dict:
    assert response.status_code == 429, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert int(response.headers["Retry-After"]) > 0
    body = response.json()
    assert body["status"] == 429 and setting in body["detail"], body
    return body


def upload(client: ApiSession, path: Path, name: str | None = None) -> requests.Response:
    with path.open("rb") as handle:
        return client.post("/v1/models", files={"file": handle},
                           data={"name": name or path.stem, "format": "torchscript",
                                 "input": json.dumps(DIGITS_INPUT)})


def test_uploads_past_the_storage_quota_are_refused(stack, model_files, storage_quota, tmp_path):
    client = stack.session("storage")
    first = upload(client, model_files[0])
    assert first.status_code == 201, first.text
    # The same bytes again, as another model, are one blob: they count once.
    assert upload(client, model_files[0], name="copy").status_code == 201
    started = time.monotonic()
    refused = assert_quota_refusal(upload(client, model_files[1]), "SHIFTSCORE_QUOTA_STORAGE")
    assert time.monotonic() - started < 2
    assert str(storage_quota) in refused["detail"] and "DELETE /v1/models" in refused["detail"]
    rng = np.random.default_rng(0)
    big = npz(tmp_path / "big.npz", images=rng.integers(0, 256, (storage_quota // 64, 8, 8), dtype=np.uint8),
              labels=rng.integers(0, 10, storage_quota // 64).astype(np.int64))
    with big.open("rb") as handle:
        response = client.post("/v1/datasets", files={"file": handle}, data={"name": "big"})
    assert_quota_refusal(response, "SHIFTSCORE_QUOTA_STORAGE")
    # A small dataset fits, and the same file again reuses its arrays: no more bytes.
    small = npz(tmp_path / "small.npz", images=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8),
                labels=rng.integers(0, 10, 20).astype(np.int64))
    for name in ("small", "small-again"):
        with small.open("rb") as handle:
            response = client.post("/v1/datasets", files={"file": handle}, data={"name": name})
        assert response.status_code in (201, 202), response.text
        assert client.wait_dataset(response.json()["id"])["status"] == "ready"
    # Another tenant is not charged for this one's bytes.
    assert upload(stack.session("storage-other"), model_files[1]).status_code == 201
    # Deleting frees the quota at once.
    for model in client.get("/v1/models").json()["items"]:
        assert client.delete(f"/v1/models/{model['id']}").status_code == 204
    assert upload(client, model_files[1]).status_code == 201


def test_sweeps_past_the_queued_quota_are_refused_and_one_runs_at_a_time(stack, model_files):
    client = stack.session("sweeps")
    response = upload(client, model_files[0])
    model = client.wait_model(response.json()["id"])
    assert model["status"] == "ready", model
    # 900 digits x 81 shifts: 2 chunks, a few seconds each.
    body = {"model_id": model["id"], "dataset_id": "digits", "shifts": {"dx": [-4, 4], "dy": [-4, 4]},
            "max_samples": 900}
    ids = []
    for seed in range(3):
        if seed == 2:  # two may wait (SHIFTSCORE_QUOTA_QUEUED=2): the third comes once the first has started
            deadline = time.monotonic() + 60
            while not stack.sql("SELECT count(*) FROM evaluations WHERE id = ANY(%s) AND status <> 'queued'",
                                ids)[0][0]:
                assert time.monotonic() < deadline, "no sweep started within 60 s"
                time.sleep(0.05)
        response = client.post("/v1/evaluations", json={**body, "seed": seed})
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    statuses: list[dict[str, str]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            rows = stack.sql("SELECT id, status FROM evaluations WHERE id = ANY(%s)", ids)
            statuses.append(dict(rows))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        # One running (SHIFTSCORE_QUOTA_RUNNING=1), two queued (SHIFTSCORE_QUOTA_QUEUED=2): a fourth is refused.
        deadline = time.monotonic() + 60
        while stack.sql("SELECT count(*) FROM evaluations WHERE id = ANY(%s) AND status = 'queued'", ids)[0][0] > 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        refused = client.post("/v1/evaluations", json={**body, "seed": 3})
        if refused.status_code == 429:
            assert_quota_refusal(refused, "SHIFTSCORE_QUOTA_QUEUED")
        else:  # the first sweep finished meanwhile, freeing a place: the quota still holds on the next
            assert refused.status_code == 202, refused.text
            ids.append(refused.json()["id"])
            assert_quota_refusal(client.post("/v1/evaluations", json={**body, "seed": 4}), "SHIFTSCORE_QUOTA_QUEUED")
        # Other tenants are not held back by this one's quota.
        other = stack.session("sweeps-other")
        theirs = other.wait_model(upload(other, model_files[0]).json()["id"])
        response = other.post("/v1/evaluations", json={"model_id": theirs["id"], "dataset_id": "digits",
                                                       "shifts": {"list": [[0, 1]]}, "max_samples": 20})
        assert response.status_code == 202, response.text
        outcomes = [poll(client, i, timeout=240) for i in ids]
    finally:
        stop.set()
        watcher.join()
    assert [o["status"] for o in outcomes] == ["succeeded"] * len(ids)
    most_running = max(sum(s == "running" for s in snapshot.values()) for snapshot in statuses)
    assert most_running == 1, "a tenant ran more sweeps at once than SHIFTSCORE_QUOTA_RUNNING"
    # The quota is on sweeps, not chunks: both workers still shared each sweep.
    workers = stack.sql("SELECT evaluation_id, count(DISTINCT worker) FROM evaluation_chunks "
                        "WHERE evaluation_id = ANY(%s) GROUP BY evaluation_id", ids)
    assert any(n == 2 for _, n in workers), workers
