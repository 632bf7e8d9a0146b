"""Model validation holds a lease like a chunk: one holder at a time, taken over when silent, never endless."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from db import jobs
from db.migrate import upgrade
from db.models import Blob, Model, Tenant
from db.session import make_engine


@pytest.fixture
def session(tmp_path) -> Session:
    url = f"sqlite:///{tmp_path / 'lease.sqlite3'}"
    upgrade(url)
    factory = sessionmaker(make_engine(url), expire_on_commit=False)
    with factory() as session:
        tenant = Tenant(name="alice", webhook_secret="s")
        session.add_all([tenant, Blob(sha256="a" * 64, size=1, data=b"x")])
        session.flush()
        session.add(Model(id="m1", tenant_id=tenant.id, name="m", format="torchscript", sha256="a" * 64,
                          input_spec={"channels": 1, "height": 8, "width": 8}))
        session.commit()
        yield session


LONG = timedelta(seconds=60)
NOW = timedelta(seconds=0)


def test_a_held_validation_is_not_taken_twice_nor_counted_as_waiting(session):
    claim = jobs.claim_validation(session, "m1", "w1", LONG, max_attempts=3)
    session.commit()
    assert claim is not None and claim.attempt == 1
    assert jobs.claim_validation(session, "m1", "w2", LONG, max_attempts=3) is None
    waiting = jobs.waiting_work(session, jobs.utcnow() + timedelta(seconds=1) - LONG)
    assert waiting.models == [] and waiting.count == 0


def test_a_silent_holder_is_taken_over_and_loses_its_write(session):
    first = jobs.claim_validation(session, "m1", "w1", LONG, max_attempts=3)
    session.commit()
    second = jobs.claim_validation(session, "m1", "w2", NOW, max_attempts=3)
    session.commit()
    assert second is not None and second.attempt == 2
    assert not jobs.record_model_validation(session, first, error=None, num_parameters=1, num_outputs=10)
    assert jobs.record_model_validation(session, second, error=None, num_parameters=1, num_outputs=10,
                                        seconds_per_image=0.001)
    session.commit()
    model = session.get(Model, "m1")
    session.refresh(model)
    assert (model.status, model.seconds_per_image) == ("ready", 0.001)


def test_a_validation_that_never_finishes_ends_invalid_after_the_attempt_limit(session):
    for attempt in (1, 2, 3):
        claim = jobs.claim_validation(session, "m1", f"w{attempt}", NOW, max_attempts=3)
        session.commit()
        assert claim is not None and claim.attempt == attempt
    assert jobs.claim_validation(session, "m1", "w4", NOW, max_attempts=3) is None
    session.commit()
    model = session.get(Model, "m1")
    session.refresh(model)
    assert model.status == "invalid"
    assert "started 3 times" in model.error
