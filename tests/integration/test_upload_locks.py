"""Large uploads on PostgreSQL: the copy into chunk rows holds no tenant lock, and the same bytes at once are one blob.

Copying a file of GBs into the database takes minutes. The tenant's row lock (taken for the
exact quota check) must not be held meanwhile, or every other request of the tenant (a sweep
submitted, another upload) waits for the copy. Observed directly: while the service's copy
has just run, another connection locks the tenant's row with NOWAIT.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

import api.services.datasets as dataset_service
import api.services.models as model_service
from api.http.schemas import ModelUpload
from api.http.uploads import Upload
from db.blobs import CHUNK_BYTES, put_blob_file
from db.migrate import upgrade
from db.models import Blob, BlobChunk, Tenant
from db.session import make_engine
from tests.stack import create_pg_database, drop_pg_database

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    url = create_pg_database()
    upgrade(url)
    yield url
    drop_pg_database(url)


@pytest.fixture(scope="module")
def engine(database) -> Iterator[Engine]:
    engine = make_engine(database)
    yield engine
    engine.dispose()


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
