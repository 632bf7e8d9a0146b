"""Nothing is lost in dataset ingestion: faults injected into the real stack (API, Celery workers, Redis, PostgreSQL).

One stack for the module: two worker processes, the scheduler (reconciler, every 2 s) and
a redis-server of its own that the first test kills and restarts. SHIFTSCORE_STALE_AFTER
is 2 s, so a silent ingestion is sent again within a few seconds. The slow dataset is a zip
of 60,000 tiny PNGs: seconds of parsing on any machine, so a kill lands mid-ingestion.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.dataset_corpus import npz, png, write_zip
from tests.stack import ApiSession, Stack, running_stack

pytestmark = pytest.mark.integration

STALE_AFTER_S = 2
MAX_ATTEMPTS = 3
SLOW_IMAGES = 60_000


@pytest.fixture(scope="module")
def stack(tmp_path_factory, broker) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("ingestion-faults"), workers=2, broker_url=broker.url,
                       SHIFTSCORE_STALE_AFTER=str(STALE_AFTER_S), SHIFTSCORE_MAX_ATTEMPTS=str(MAX_ATTEMPTS)) as stack:
        yield stack


@pytest.fixture(scope="module")
def client(stack) -> ApiSession:
    return stack.session("ingestion-faults")


@pytest.fixture(scope="module")
def slow_members() -> dict[str, bytes]:
    return {f"class{i % 2}/{i}.png": png(i % 256, (8, 8)) for i in range(SLOW_IMAGES)}


def post(client: ApiSession, path: Path, name: str) -> str:
    """Upload without waiting for the ingestion; the new dataset's id."""
    with path.open("rb") as handle:
        response = client.post("/v1/datasets", files={"file": (path.name, handle)}, data={"name": name}, timeout=120)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "processing"
    return response.json()["id"]


def lease(stack: Stack, dataset_id: str) -> tuple:
    """(status, attempts, worker, error, upload_blob) of a dataset."""
    return stack.sql("SELECT status, ingest_attempts, ingest_worker, error, upload_blob FROM datasets WHERE id = %s",
                     dataset_id)[0]


def taken(stack: Stack, dataset_id: str, attempt: int, timeout: float = 60) -> tuple:
    """The dataset once attempt number `attempt` holds it and is still ingesting."""
    deadline = time.monotonic() + timeout
    while (row := lease(stack, dataset_id))[:2] != ("processing", attempt):
        assert time.monotonic() < deadline, f"attempt {attempt} did not start within {timeout} s: {row}"
        time.sleep(0.02)
    return row


def pid_of(worker: str) -> int:
    return int(worker.rsplit(":", 1)[1])


def test_an_ingestion_whose_message_never_reached_the_broker_is_sent_again(stack, client, broker, tmp_path):
    data = npz(tmp_path / "small.npz", images=np.arange(20 * 6 * 5, dtype=np.uint8).reshape(20, 6, 5),
               labels=np.arange(20) % 2)
    broker.kill()
    try:
        # The row is committed, then the enqueue fails: the API still answers 202 `processing`.
        dataset_id = post(client, data, "sent-while-the-broker-was-down")
        assert lease(stack, dataset_id)[:2] == ("processing", 0)
    finally:
        broker.start()
    done = client.wait_dataset(dataset_id, timeout=90)
    assert (done["status"], done["num_samples"]) == ("ready", 20), done
    # Never delivered, then sent once by the reconciler: one attempt, nothing run twice.
    assert lease(stack, dataset_id)[1] == 1


def test_a_worker_killed_mid_ingestion_is_replaced_by_another(stack, client, slow_members, tmp_path):
    dataset_id = post(client, write_zip(tmp_path / "slow.zip", slow_members), "killed-mid-ingestion")
    victim = taken(stack, dataset_id, 1)[2]
    stack.kill_worker(stack.worker_running(pid_of(victim)))  # the whole worker: its message stays unacknowledged
    killed_at = time.monotonic()
    assert lease(stack, dataset_id)[:2] == ("processing", 1), "the ingestion ended before the kill"
    stack.start_worker()
    done = client.wait_dataset(dataset_id, timeout=120)
    assert (done["status"], done["num_samples"]) == ("ready", SLOW_IMAGES), done
    status, attempts, worker, error, upload_blob = lease(stack, dataset_id)
    assert (attempts, error, upload_blob) == (2, None, None) and worker != victim
    print(f"\nkill to ready: {time.monotonic() - killed_at:.1f} s")


def test_an_ingestion_that_kills_its_worker_every_time_ends_invalid(stack, client, slow_members, tmp_path):
    members = {**slow_members, "class0/extra.png": png(7, (8, 8))}  # other bytes: no stored copy to reuse
    dataset_id = post(client, write_zip(tmp_path / "deadly.zip", members), "kills-its-worker")
    for attempt in range(1, MAX_ATTEMPTS + 1):
        worker = taken(stack, dataset_id, attempt)[2]
        os.kill(pid_of(worker), signal.SIGKILL)  # the pool process dies, as in an out-of-memory kill
    done = client.wait_dataset(dataset_id, timeout=60)
    assert done["status"] == "invalid", done
    assert f"'deadly.zip' was started {MAX_ATTEMPTS} times and never finished" in done["error"], done
    assert "its worker died or was killed each time" in done["error"]
    status, attempts, _, _, upload_blob = lease(stack, dataset_id)
    assert (attempts, upload_blob) == (MAX_ATTEMPTS, None)
    assert all(w.poll() is None for w in stack.workers)
