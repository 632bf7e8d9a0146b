"""Dataset ingestion holds a lease like a chunk: one holder, taken over when silent, re-sent when lost, never endless.

On SQLite, through the worker's own ingestion code (no Celery: the message is the call).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import update

import db.session as db_session
import worker.ingestion as ingestion
import worker.reconciler as reconciler
from core.settings import reset_settings
from db import jobs, leases
from db.blobs import put_blob_file
from db.datasets import claim_ingestion
from db.migrate import upgrade
from db.models import Dataset, Tenant, utcnow
from db.session import dispose_engine, session_scope, use_database
from tests.dataset_corpus import npz

LONG = timedelta(seconds=60)
NOW = timedelta(seconds=0)


@pytest.fixture
def tenant(tmp_path, monkeypatch) -> str:
    url = f"sqlite:///{tmp_path / 'ingestion.sqlite3'}"
    monkeypatch.setenv("SHIFTSCORE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SHIFTSCORE_STALE_AFTER", "60")
    monkeypatch.setenv("SHIFTSCORE_MAX_ATTEMPTS", "3")
    monkeypatch.setattr(db_session, "_url", None)
    reset_settings()
    upgrade(url)
    use_database(url)
    with session_scope() as session:
        owner = Tenant(name="ivy", webhook_secret="s")
        session.add(owner)
        session.flush()
        tenant_id = owner.id
    yield tenant_id
    dispose_engine()
    reset_settings()


def processing(tenant_id: str, upload: Path, name: str = "d", age: timedelta = NOW) -> str:
    """A dataset as the API leaves it: `processing`, its upload stored, created `age` ago."""
    with session_scope() as session:
        dataset = Dataset(tenant_id=tenant_id, name=name, sha256="x", status="processing", filename=upload.name,
                          upload_blob=put_blob_file(session, upload), created_at=utcnow() - age)
        session.add(dataset)
        session.flush()
        return dataset.id


def row(dataset_id: str) -> Dataset:
    with session_scope() as session:
        return session.get(Dataset, dataset_id)


@pytest.fixture
def upload(tmp_path) -> Path:
    images = np.arange(4 * 6 * 5, dtype=np.uint8).reshape(4, 6, 5)
    return npz(tmp_path / "four.npz", images=images, labels=np.array([0, 1, 0, 1]))


def silence(dataset_id: str) -> None:
    """The holder's last beat, long past SHIFTSCORE_STALE_AFTER: as if its worker had been killed."""
    with session_scope() as session:
        session.execute(update(Dataset).where(Dataset.id == dataset_id).values(ingest_heartbeat_at=utcnow() - LONG * 2))


def claim(dataset_id: str, worker: str, stale_after: timedelta) -> leases.Lease | None:
    with session_scope() as session:
        return claim_ingestion(session, dataset_id, worker, stale_after, max_attempts=3)


def test_the_reconciler_sends_again_only_datasets_nobody_live_holds(tenant, upload):
    old = timedelta(seconds=120)
    fresh = processing(tenant, upload, "fresh")
    lost = processing(tenant, upload, "lost", age=old)
    held = processing(tenant, upload, "held", age=old)
    silent = processing(tenant, upload, "silent", age=old)
    done = processing(tenant, upload, "done", age=old)
    assert claim(held, "w1", LONG) is not None and claim(silent, "w2", LONG) is not None
    with session_scope() as session:
        session.execute(update(Dataset).where(Dataset.id == silent)
                        .values(ingest_heartbeat_at=utcnow() - timedelta(seconds=90)))
        session.execute(update(Dataset).where(Dataset.id == done).values(status="ready", upload_blob=None))
        waiting = jobs.waiting_work(session, utcnow() - LONG)
    # The fresh one still has its first message on the way: counted (a message should be queued), not re-sent.
    assert sorted(waiting.datasets) == sorted([lost, silent])
    assert waiting.count == 3 and fresh not in waiting.datasets and held not in waiting.datasets


def test_a_second_message_does_nothing_while_held_or_once_done(tenant, upload):
    dataset_id = processing(tenant, upload)
    first = claim(dataset_id, "w1", LONG)
    assert first == leases.Lease(dataset_id, 1)
    ingestion.ingest_dataset(dataset_id, "w2")  # a duplicate message while w1 is alive
    assert (row(dataset_id).status, row(dataset_id).ingest_attempts, row(dataset_id).ingest_worker) == \
        ("processing", 1, "w1")
    silence(dataset_id)
    ingestion.ingest_dataset(dataset_id, "w2")  # w1 went silent: w2 takes over and finishes
    after = row(dataset_id)
    assert (after.status, after.ingest_attempts, after.ingest_worker, after.num_samples) == ("ready", 2, "w2", 4)
    assert after.upload_blob is None and after.images_blob is not None
    ingestion.ingest_dataset(dataset_id, "w3")
    assert (row(dataset_id).ingest_attempts, row(dataset_id).images_blob) == (2, after.images_blob)
    with session_scope() as session:
        assert not leases.beat(session, leases.INGESTION, first)


def test_a_worker_that_lost_its_lease_records_nothing(tenant, upload, monkeypatch):
    dataset_id = processing(tenant, upload)
    parse = ingestion.parse_dataset

    def taken_over_while_parsing(*args, **kwargs):
        # Another worker takes the dataset meanwhile, as if this one had gone silent.
        assert claim(dataset_id, "w2", NOW) == leases.Lease(dataset_id, 2)
        return parse(*args, **kwargs)

    monkeypatch.setattr(ingestion, "parse_dataset", taken_over_while_parsing)
    ingestion.ingest_dataset(dataset_id, "w1")
    after = row(dataset_id)
    assert (after.status, after.ingest_attempts, after.ingest_worker) == ("processing", 2, "w2")
    assert after.images_blob is None and after.upload_blob is not None


def test_an_ingestion_started_too_often_ends_invalid_and_releases_its_upload(tenant, upload):
    dataset_id = processing(tenant, upload)
    for attempt in (1, 2, 3):
        assert claim(dataset_id, f"w{attempt}", NOW) == leases.Lease(dataset_id, attempt)
    silence(dataset_id)
    ingestion.ingest_dataset(dataset_id, "w4")
    after = row(dataset_id)
    assert (after.status, after.ingest_attempts, after.upload_blob, after.images_blob) == ("invalid", 3, None, None)
    assert "'four.npz' was started 3 times and never finished" in after.error
    assert "SHIFTSCORE_TASK_HARD_TIME_LIMIT" in after.error


def test_a_live_holder_at_the_attempt_limit_is_left_alone(tenant, upload):
    dataset_id = processing(tenant, upload)
    for attempt in (1, 2, 3):
        assert claim(dataset_id, f"w{attempt}", NOW) is not None
    assert claim(dataset_id, "w4", LONG) is None  # w3 is still beating: its attempt may yet finish
    assert (row(dataset_id).status, row(dataset_id).ingest_worker) == ("processing", "w3")


def test_a_reconciler_pass_sends_the_lost_ingestion_once_the_queue_holds_fewer_messages(tenant, upload, monkeypatch):
    lost = processing(tenant, upload, "lost", age=timedelta(seconds=120))
    sent: list[str] = []
    monkeypatch.setattr(reconciler, "enqueue_dataset_ingestion", sent.append)
    monkeypatch.setattr(reconciler, "queue_depth", lambda: 1)  # its message is still queued: nothing to send
    assert reconciler.reconcile().resent == 0 and sent == []
    monkeypatch.setattr(reconciler, "queue_depth", lambda: 0)  # the broker lost it
    assert reconciler.reconcile().resent == 1 and sent == [lost]
