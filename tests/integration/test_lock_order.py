"""One lock order on PostgreSQL: chunk rows, then the evaluation row, for cancels, failures and progress.

A deadlock needs two writers taking the same two rows in opposite orders within a
few microseconds, too rare to provoke on demand. So the order itself is observed:
a test transaction holds the evaluation's row lock, a writer runs until it waits
for it, and the test checks which chunk rows the writer already holds. Then a
stress run of cancels racing progress writes must see no deadlock.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from db import jobs
from db.blobs import put_blob
from db.models import Dataset, Evaluation, EvaluationChunk, Model, Tenant
from tests.migrated_database import database, engine  # noqa: F401 (module fixtures)

pytestmark = pytest.mark.integration
CHUNKS = 4


@pytest.fixture(scope="module")
def tenant(engine) -> dict[str, str]:
    with Session(engine) as session, session.begin():
        tenant = Tenant(name="locks", webhook_secret="s")
        session.add(tenant)
        session.flush()
        blob = put_blob(session, b"not a real model")
        model = Model(tenant_id=tenant.id, name="m", format="torchscript", sha256=blob,
                      input_spec={"channels": 1, "height": 8, "width": 8}, status="ready")
        dataset = Dataset(tenant_id=tenant.id, name="d", sha256=blob, images_blob=blob, targets_blob=blob,
                          num_samples=100, channels=1, height=8, width=8, num_classes=10, max_label=9)
        session.add_all([model, dataset])
        session.flush()
        return {"tenant": tenant.id, "model": model.id, "dataset": dataset.id}


def running_evaluation(engine: Engine, ids: dict[str, str]) -> list[jobs.ChunkClaim]:
    """An evaluation with CHUNKS running chunks, each claimed as a worker would."""
    with Session(engine) as session, session.begin():
        evaluation = Evaluation(tenant_id=ids["tenant"], model_id=ids["model"], dataset_id=ids["dataset"],
                                request={"shifts": {}}, sweep_key="k", request_sha256="r",
                                progress_total=CHUNKS * 1000)
        session.add(evaluation)
        session.flush()
        session.add_all(EvaluationChunk(evaluation_id=evaluation.id, index=i, start=i * 25, stop=i * 25 + 25,
                                        total=1000, position=i * 25) for i in range(CHUNKS))
        evaluation_id = evaluation.id
    claims = []
    for index in range(CHUNKS):
        with Session(engine) as session, session.begin():
            claimed = jobs.claim_chunk(session, evaluation_id, index, f"w{index}", timedelta(seconds=60), 3)
            assert claimed is not None
            claims.append(claimed.claim)
    return claims


def pg_url(database: str) -> str:
    return database.replace("postgresql+psycopg://", "postgresql://", 1)


def chunks_locked(database: str, evaluation_id: str) -> list[int]:
    """The chunk rows of the evaluation that some other transaction holds locked right now."""
    locked = []
    with psycopg.connect(pg_url(database), autocommit=True) as conn:
        for index in range(CHUNKS):
            try:
                with conn.transaction():
                    conn.execute('SELECT 1 FROM evaluation_chunks WHERE evaluation_id = %s AND "index" = %s '
                                 "FOR UPDATE NOWAIT", (evaluation_id, index))
            except psycopg.errors.LockNotAvailable:
                locked.append(index)
    return locked


def writer_waits_with(database: str, engine: Engine, evaluation_id: str, write) -> list[int]:
    """Hold the evaluation's row lock, run `write(session)` until it waits, and return the chunks it holds."""
    factory = sessionmaker(engine)
    with psycopg.connect(pg_url(database)) as holder:
        holder.execute("SELECT 1 FROM evaluations WHERE id = %s FOR UPDATE", (evaluation_id,))
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with factory() as session, session.begin():
                    write(session)
            except BaseException as exc:  # noqa: BLE001 — reported by the test below
                errors.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            waiting = holder.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()").fetchone()[0]
            if waiting:
                break
            time.sleep(0.02)
        else:
            raise AssertionError("the writer never waited for the evaluation's lock")
        held = chunks_locked(database, evaluation_id)
        holder.rollback()
    thread.join(timeout=10)
    assert not errors, errors
    return held


def test_a_cancel_locks_the_chunks_before_the_evaluation(database, engine, tenant):
    claims = running_evaluation(engine, tenant)
    evaluation_id = claims[0].evaluation_id

    def cancel(session: Session) -> None:
        jobs.request_cancel(session, session.get(Evaluation, evaluation_id))

    assert writer_waits_with(database, engine, evaluation_id, cancel) == list(range(CHUNKS))
    with Session(engine) as session:
        assert session.get(Evaluation, evaluation_id).status == "cancelled"
        assert {c.status for c in session.query(EvaluationChunk).filter_by(evaluation_id=evaluation_id)} == {"stopped"}


def test_a_failure_locks_the_chunks_before_the_evaluation(database, engine, tenant):
    claims = running_evaluation(engine, tenant)
    evaluation_id = claims[0].evaluation_id

    def fail(session: Session) -> None:
        jobs.fail_evaluation(session, evaluation_id, "test", "failed by the test")

    assert writer_waits_with(database, engine, evaluation_id, fail) == list(range(CHUNKS))


def test_a_progress_write_locks_its_chunk_before_the_evaluation(database, engine, tenant):
    claims = running_evaluation(engine, tenant)

    def progress(session: Session) -> None:
        jobs.record_chunk_progress(session, claims[2], 10, 0)

    assert writer_waits_with(database, engine, claims[0].evaluation_id, progress) == [2]


def test_cancels_racing_progress_writes_never_deadlock(engine, tenant):
    factory = sessionmaker(engine)
    deadlocks: list[str] = []
    rounds = 15

    def worker(claim: jobs.ChunkClaim, stop: threading.Event) -> int:
        done, high_water, writes = 0, 0, 0
        while not stop.is_set():
            done += 1
            try:
                with factory() as session:
                    high_water = jobs.record_chunk_progress(session, claim, done, high_water)
                    session.commit()
                writes += 1
            except jobs.LostClaim:
                return writes
            except Exception as exc:  # noqa: BLE001 — a deadlock is what this test looks for
                if "deadlock" in str(exc).lower():
                    deadlocks.append(str(exc).splitlines()[0])
                else:
                    raise
        return writes

    writes = 0
    for _ in range(rounds):
        claims = running_evaluation(engine, tenant)
        stop = threading.Event()
        with ThreadPoolExecutor(CHUNKS) as pool:
            futures = [pool.submit(worker, claim, stop) for claim in claims]
            time.sleep(0.05)
            with factory() as session, session.begin():
                jobs.request_cancel(session, session.get(Evaluation, claims[0].evaluation_id))
            stop.set()
            writes += sum(f.result(timeout=30) for f in futures)
    assert writes > rounds * CHUNKS, "the writers should have raced the cancels"
    assert deadlocks == []
