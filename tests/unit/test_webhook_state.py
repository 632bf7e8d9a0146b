"""Webhook delivery state in the database: nothing lost when the queue loses a message, nothing sent twice."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import create_engine, update
from sqlalchemy.orm import Session

from db import webhooks
from db.models import Base, Evaluation, Tenant, utcnow

DEADLINE = timedelta(seconds=10)


@pytest.fixture
def session():
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(Tenant(id="t", name="t", webhook_secret="s"))
        session.add(Evaluation(id="e", tenant_id="t", model_id="m", dataset_id="d", request={}, sweep_key="k",
                               request_sha256="r", status="succeeded", finished_at=utcnow(),
                               webhook_url="https://hooks.example.com/x"))
        session.commit()
        yield session


def _later(session: Session, seconds: float) -> None:
    """Time passes: every deadline the row holds comes `seconds` sooner."""
    row = session.get(Evaluation, "e")
    session.execute(update(Evaluation).where(Evaluation.id == "e")
                    .values(webhook_next_at=row.webhook_next_at - timedelta(seconds=seconds)))
    session.commit()


def test_a_lost_message_is_sent_again_once_and_a_duplicate_does_nothing(session):
    assert webhooks.take_due(session) == [("e", 1)]
    assert webhooks.take_due(session) == [], "queued twice while its message is still fresh"
    _later(session, webhooks.LOST_AFTER.total_seconds() + 1)
    assert webhooks.take_due(session) == [("e", 1)], "a message lost before any attempt was not sent again"

    first = webhooks.claim(session, "e", 1, DEADLINE)
    assert first is not None and (first.url, first.secret, first.attempt) == ("https://hooks.example.com/x", "s", 1)
    assert webhooks.claim(session, "e", 1, DEADLINE) is None, "a duplicate message made the attempt again"
    assert webhooks.claim(session, "e", 3, DEADLINE) is None
    webhooks.record_delivery(session, first, "the receiver answered HTTP 500")
    session.commit()
    assert webhooks.take_due(session) == [], "taken as lost while its Celery retry may still come"
    _later(session, webhooks.longest_backoff(1).total_seconds() + webhooks.LOST_AFTER.total_seconds() + 1)
    assert webhooks.take_due(session) == [("e", 2)], "a lost retry was not sent again"

    second = webhooks.claim(session, "e", 2, DEADLINE)
    webhooks.record_delivery(session, second, None)
    session.commit()
    _later(session, 10 ** 6)
    assert webhooks.take_due(session) == []
    assert webhooks.claim(session, "e", 3, DEADLINE) is None
    assert session.get(Evaluation, "e").webhook_attempts == 2


def test_a_worker_that_dies_mid_send_leaves_the_attempt_to_be_sent_again(session):
    webhooks.take_due(session)
    assert webhooks.claim(session, "e", 1, DEADLINE) is not None
    session.commit()
    _later(session, DEADLINE.total_seconds() + webhooks.LOST_AFTER.total_seconds() - 1)
    assert webhooks.take_due(session) == [], "sent again while the first attempt may still be running"
    _later(session, 2)
    assert webhooks.take_due(session) == [("e", 2)]


def test_attempts_stop_at_the_limit(session):
    session.execute(update(Evaluation).where(Evaluation.id == "e")
                    .values(webhook_attempts=webhooks.MAX_ATTEMPTS - 1))
    session.commit()
    assert webhooks.take_due(session) == [("e", webhooks.MAX_ATTEMPTS)]
    last = webhooks.claim(session, "e", webhooks.MAX_ATTEMPTS, DEADLINE)
    webhooks.record_delivery(session, last, "still failing")
    session.commit()
    _later(session, 10 ** 6)
    assert webhooks.take_due(session) == []
    assert webhooks.claim(session, "e", webhooks.MAX_ATTEMPTS + 1, DEADLINE) is None
