"""Webhook delivery state: which finished evaluations still owe their receiver a POST.

Delivery is at least once: a delivery is leased (its next attempt pushed into the
future) before it is sent, so two schedulers racing cannot both send it, and a
scheduler that dies mid-send leaves it to be retried when the lease runs out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.models import Evaluation, Tenant, utcnow

TERMINAL = ("succeeded", "failed", "cancelled")
MAX_ATTEMPTS = 10
LEASE = timedelta(seconds=60)


@dataclass(frozen=True)
class Delivery:
    evaluation_id: str
    url: str
    secret: str
    attempt: int


def backoff(attempt: int) -> timedelta:
    """Seconds to wait after failed attempt `attempt` (1, 2, 4, … capped at 10 minutes)."""
    return timedelta(seconds=min(2 ** (attempt - 1), 600))


def lease_due_deliveries(session: Session, limit: int = 20) -> list[Delivery]:
    """Take the webhooks that are due now, leasing each so no one else sends it meanwhile."""
    now = utcnow()
    rows = session.execute(
        select(Evaluation.id, Evaluation.webhook_url, Evaluation.webhook_attempts,
               Evaluation.webhook_next_at, Tenant.webhook_secret)
        .join(Tenant, Tenant.id == Evaluation.tenant_id)
        .where(
            Evaluation.webhook_url.is_not(None),
            Evaluation.webhook_delivered_at.is_(None),
            Evaluation.status.in_(TERMINAL),
            Evaluation.webhook_attempts < MAX_ATTEMPTS,
            (Evaluation.webhook_next_at.is_(None)) | (Evaluation.webhook_next_at <= now),
        )
        .order_by(Evaluation.finished_at)
        .limit(limit)
    ).all()
    leased = []
    for evaluation_id, url, attempts, next_at, secret in rows:
        won = session.execute(
            update(Evaluation)
            .where(Evaluation.id == evaluation_id, Evaluation.webhook_attempts == attempts,
                   Evaluation.webhook_delivered_at.is_(None))
            .values(webhook_attempts=attempts + 1, webhook_next_at=now + LEASE)
        ).rowcount
        if won == 1:
            leased.append(Delivery(evaluation_id, url, secret, attempts + 1))
    session.commit()
    return leased


def record_delivery(session: Session, delivery: Delivery, error: str | None) -> None:
    """Mark the webhook delivered, or schedule its next try with backoff."""
    values: dict = {"webhook_error": error}
    if error is None:
        values["webhook_delivered_at"] = utcnow()
    else:
        values["webhook_next_at"] = utcnow() + backoff(delivery.attempt)
    session.execute(
        update(Evaluation)
        .where(Evaluation.id == delivery.evaluation_id, Evaluation.webhook_attempts == delivery.attempt)
        .values(**values)
    )
