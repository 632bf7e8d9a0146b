"""Large uploads on PostgreSQL: copies into chunk rows hold no tenant lock, and the same bytes at once are one blob.

Copying a file of GBs into the database takes minutes, in the API (the upload) and in the
ingesting worker (the arrays). The tenant's row lock (taken for the exact quota check) must
not be held meanwhile, or every other request of the tenant (a sweep submitted, another
upload) waits for the copy. Observed directly: right after each copy, another connection
locks the tenant's row with NOWAIT.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

import api.services.datasets as dataset_service
import api.services.models as model_service
from api.http.schemas import ModelUpload
import numpy as np

import worker.ingestion as ingestion
from api.http.uploads import Upload
from core.settings import reset_settings
from db.blobs import CHUNK_BYTES, put_blob_file
from db.models import Blob, BlobChunk, Dataset, Tenant
from db.session import use_database
from tests.migrated_database import database, engine  # noqa: F401 (module fixtures)

pytestmark = pytest.mark.integration


def new_tenant(engine: Engine, name: str) -> str:
    with Session(engine) as session, session.begin():
        tenant = Tenant(name=name, webhook_secret="s")
        session.add(tenant)
        session.flush()
        return tenant.id


def upload_file(tmp_path: Path, size: int) -> Upload:
    data = os.urandom(size)
    path = tmp_path / f"upload-{size}.bin"
    path.write_bytes(data)
    return Upload(path, path.name, hashlib.sha256(data).hexdigest(), size)


def tenant_lockable(database: str, tenant_id: str) -> bool:
    """Whether another connection can take the lock the services take (lock_tenant) right now."""
    with psycopg.connect(database.replace("postgresql+psycopg://", "postgresql://")) as conn:
        try:
            conn.execute("SELECT id FROM tenants WHERE id = %s FOR NO KEY UPDATE NOWAIT", (tenant_id,))
        except psycopg.errors.LockNotAvailable:
            return False
        return True


@pytest.fixture
def copy_probe(monkeypatch, database):
    """Wraps the services' put_blob_file: right after each copy, is the tenant's row free?"""
    seen: list[bool] = []

    def wrap(module):
        def probing(session, path, digest=None):
            stored = put_blob_file(session, path, digest)
            seen.append(tenant_lockable(database, probing.tenant_id))
            return stored
        monkeypatch.setattr(module, "put_blob_file", probing)
        return probing

    return wrap, seen


def test_a_dataset_upload_is_copied_without_the_tenant_lock(engine, database, copy_probe, tmp_path) -> None:
    wrap, seen = copy_probe
    tenant_id = new_tenant(engine, "copy-dataset")
    wrap(dataset_service).tenant_id = tenant_id
    with Session(engine) as session, session.begin():
        dataset, outcome = dataset_service.create_dataset(session, tenant_id, "big", upload_file(tmp_path, CHUNK_BYTES + 1))
        assert outcome == "processing" and dataset.upload_blob
    assert seen == [True]


def test_a_model_upload_is_copied_without_the_tenant_lock(engine, database, copy_probe, tmp_path) -> None:
    wrap, seen = copy_probe
    tenant_id = new_tenant(engine, "copy-model")
    wrap(model_service).tenant_id = tenant_id
    fields = ModelUpload(name="big", format="torchscript",
                         input={"channels": 1, "height": 8, "width": 8, "mean": [0.5], "std": [0.5]})
    with Session(engine) as session, session.begin():
        model, created = model_service.create_model(session, tenant_id, fields, upload_file(tmp_path, CHUNK_BYTES + 2))
        assert created and model.status == "validating"
    assert seen == [True]


def test_the_same_bytes_stored_at_once_by_two_transactions_are_one_blob(engine, tmp_path) -> None:
    upload = upload_file(tmp_path, 2 * CHUNK_BYTES + 3)
    first = Session(engine)
    first.begin()
    assert put_blob_file(first, upload.path, upload.sha256) == upload.sha256
    outcome: dict = {}

    def second() -> None:
        # Waits on the first transaction's uncommitted blob row, then finds it stored.
        try:
            with Session(engine) as session, session.begin():
                outcome["digest"] = put_blob_file(session, upload.path, upload.sha256)
        except Exception as exc:  # noqa: BLE001 — reported by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=second)
    thread.start()
    thread.join(1.0)
    assert thread.is_alive(), "the second insert did not wait for the first transaction"
    first.commit()
    first.close()
    thread.join(30)
    assert outcome == {"digest": upload.sha256}, outcome
    with Session(engine) as session:
        assert session.execute(select(func.count()).select_from(Blob).where(Blob.sha256 == upload.sha256)).scalar_one() == 1
        assert session.execute(select(func.count()).select_from(BlobChunk)
                               .where(BlobChunk.sha256 == upload.sha256)).scalar_one() == 3


@pytest.fixture
def worker_env(monkeypatch, database, tmp_path):
    """The worker's ingestion on this database, with its storage under tmp_path."""
    monkeypatch.setenv("SHIFTSCORE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SHIFTSCORE_DATABASE_URL", database)
    reset_settings()
    use_database(database)
    yield monkeypatch
    reset_settings()


def processing_dataset(engine: Engine, tenant_id: str, path: Path) -> str:
    with Session(engine) as session, session.begin():
        dataset = Dataset(tenant_id=tenant_id, name="d", sha256="x", status="processing", filename=path.name,
                          upload_blob=put_blob_file(session, path))
        session.add(dataset)
        session.flush()
        return dataset.id


def npz(tmp_path: Path, count: int) -> Path:
    rng = np.random.default_rng(count)
    np.savez(tmp_path / f"{count}.npz", images=rng.integers(0, 256, (count, 64, 64, 3), dtype=np.uint8),
             labels=np.arange(count) % 3)
    return tmp_path / f"{count}.npz"


def test_ingested_arrays_are_copied_without_the_tenant_lock(engine, database, worker_env, tmp_path) -> None:
    tenant_id = new_tenant(engine, "ingest-copy")
    dataset_id = processing_dataset(engine, tenant_id, npz(tmp_path, 400))  # 4.9 MB of pixels: two chunks
    seen = []
    store = ingestion.store_arrays

    def probing(session, dataset, parsed):
        store(session, dataset, parsed)
        seen.append(tenant_lockable(database, tenant_id))

    worker_env.setattr(ingestion, "store_arrays", probing)
    ingestion.ingest_dataset(dataset_id, "test-worker:1")
    with Session(engine) as session:
        dataset = session.get(Dataset, dataset_id)
        assert (dataset.status, dataset.num_samples, dataset.upload_blob) == ("ready", 400, None), dataset.error
    assert seen == [True]


def test_ingested_arrays_over_the_quota_are_taken_back(engine, database, worker_env, tmp_path) -> None:
    worker_env.setenv("SHIFTSCORE_QUOTA_STORAGE", "1M")
    reset_settings()
    tenant_id = new_tenant(engine, "ingest-quota")
    path = npz(tmp_path, 300)  # 3.7 MB of pixels
    dataset_id = processing_dataset(engine, tenant_id, path)
    with Session(engine) as session:
        before = set(session.execute(select(Blob.sha256)).scalars())
    assert hashlib.sha256(path.read_bytes()).hexdigest() in before
    ingestion.ingest_dataset(dataset_id, "test-worker:2")
    with Session(engine) as session:
        dataset = session.get(Dataset, dataset_id)
        assert dataset.status == "invalid" and "SHIFTSCORE_QUOTA_STORAGE" in dataset.error, dataset.error
        assert (dataset.images_blob, dataset.targets_blob, dataset.upload_blob) == (None, None, None)
        # Nothing of the arrays stays (the upload's blob is reclaimed by the scheduler like any other).
        assert set(session.execute(select(Blob.sha256)).scalars()) == before
