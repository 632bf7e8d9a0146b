"""Webhook delivery state: which finished evaluations still owe their receiver a POST.

The database is the truth and the queue only carries work, as for sweeps. Each
evaluation row counts its delivery attempts; `webhook_next_at` is the moment by which
something must have happened to the delivery (a message taken, an attempt finished, a
retry begun). A delivery past that moment has lost its message (a Redis restart, a
webhook worker killed mid-send) and the periodic pass sends it again. An attempt is
claimed by its number, so a duplicate message finds it made and does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.models import Evaluation, Tenant, utcnow

TERMINAL = ("succeeded", "failed", "cancelled")
MAX_ATTEMPTS = 10
# Retries wait up to 1, 2, 4, … seconds (Celery's retry_backoff, with full jitter), capped here.
BACKOFF_FACTOR_S = 1
BACKOFF_MAX_S = 600
# How late a delivery's message may be before it is taken as lost and sent again.
LOST_AFTER = timedelta(seconds=60)


@dataclass(frozen=True)
class Delivery:
    evaluation_id: str
    url: str
    secret: str
    attempt: int


def longest_backoff(attempt: int) -> timedelta:
    """The longest wait after failed attempt `attempt` (the jitter picks a wait below it)."""
    return timedelta(seconds=min(BACKOFF_FACTOR_S * 2 ** (attempt - 1), BACKOFF_MAX_S))


def _pending():
    return (
        Evaluation.webhook_url.is_not(None),
        Evaluation.webhook_delivered_at.is_(None),
        Evaluation.status.in_(TERMINAL),
        Evaluation.webhook_attempts < MAX_ATTEMPTS,
    )


def take_due(session: Session, limit: int = 200) -> list[tuple[str, int]]:
    """Deliveries never sent or whose message is lost, as (evaluation id, next attempt), each
    marked so that no other pass sends it within LOST_AFTER."""
    now = utcnow()
    due = (Evaluation.webhook_next_at.is_(None)) | (Evaluation.webhook_next_at <= now)
    rows = session.execute(
        select(Evaluation.id, Evaluation.webhook_attempts)
        .where(*_pending(), due)
        .order_by(Evaluation.finished_at)
        .limit(limit)
    ).all()
    taken = []
    for evaluation_id, attempts in rows:
        won = session.execute(
            update(Evaluation)
            .where(Evaluation.id == evaluation_id, Evaluation.webhook_attempts == attempts, due)
            .values(webhook_next_at=now + LOST_AFTER)
        ).rowcount
        if won == 1:
            taken.append((evaluation_id, attempts + 1))
    session.commit()
    return taken


def claim(session: Session, evaluation_id: str, attempt: int, deadline: timedelta) -> Delivery | None:
    """Begin attempt number `attempt`; None when it was made already or is past the limit."""
    if attempt > MAX_ATTEMPTS:
        return None
    won = session.execute(
        update(Evaluation)
        .where(Evaluation.id == evaluation_id, Evaluation.webhook_attempts == attempt - 1, *_pending())
        .values(webhook_attempts=attempt, webhook_next_at=utcnow() + deadline + LOST_AFTER)
    ).rowcount
    if won != 1:
        return None
    url, secret = session.execute(
        select(Evaluation.webhook_url, Tenant.webhook_secret)
        .join(Tenant, Tenant.id == Evaluation.tenant_id)
        .where(Evaluation.id == evaluation_id)
    ).one()
    return Delivery(evaluation_id, url, secret, attempt)


def record_delivery(session: Session, delivery: Delivery, error: str | None) -> None:
    """Mark the webhook delivered, or give its retry until the longest backoff (plus slack) to begin."""
    values: dict = {"webhook_error": error}
    if error is None:
        values["webhook_delivered_at"] = utcnow()
    else:
        values["webhook_next_at"] = utcnow() + longest_backoff(delivery.attempt) + LOST_AFTER
    session.execute(
        update(Evaluation)
        .where(Evaluation.id == delivery.evaluation_id, Evaluation.webhook_attempts == delivery.attempt)
        .values(**values)
    )
