"""Deliver evaluation webhooks: a signed JSON POST to the URL given at submission.

The receiver verifies `X-ShiftScore-Signature: t=<unix time>,v1=<hex>` where
hex = HMAC-SHA256(tenant webhook secret, f"{t}.{raw body}"); the secret is at
GET /v1/tenant. Delivery is at least once: the body's `delivery_id` lets a
receiver drop repeats.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time

import requests

from db import webhooks
from db.models import Evaluation
from db.session import session_scope

log = logging.getLogger(__name__)
TIMEOUT_S = 10


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The X-ShiftScore-Signature header value for `body` sent at `timestamp`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def _payload(delivery: webhooks.Delivery) -> bytes:
    with session_scope() as session:
        evaluation = session.get(Evaluation, delivery.evaluation_id)
        body = {
            "event": f"evaluation.{evaluation.status}",
            "delivery_id": f"{delivery.evaluation_id}:{evaluation.status}",
            "evaluation": {
                "id": evaluation.id,
                "status": evaluation.status,
                "model_id": evaluation.model_id,
                "dataset_id": evaluation.dataset_id,
                "tags": evaluation.tags,
                "summary": evaluation.summary if evaluation.status == "succeeded" else None,
                "error": {"type": evaluation.error_type, "detail": evaluation.error_detail}
                if evaluation.error_type else None,
                "href": f"/v1/evaluations/{evaluation.id}",
            },
        }
    return json.dumps(body).encode()


def _send(delivery: webhooks.Delivery) -> str | None:
    """POST once; None on a 2xx answer, else what went wrong."""
    body = _payload(delivery)
    timestamp = int(time.time())
    try:
        response = requests.post(
            delivery.url, data=body, timeout=TIMEOUT_S, allow_redirects=False,
            headers={
                "Content-Type": "application/json",
                "User-Agent": "ShiftScore-Webhook/1",
                "X-ShiftScore-Signature": signature(delivery.secret, timestamp, body),
                "X-ShiftScore-Attempt": str(delivery.attempt),
            },
        )
    except requests.RequestException as exc:
        return f"{type(exc).__name__}: {exc}"[:500]
    if 200 <= response.status_code < 300:
        return None
    return f"the receiver answered HTTP {response.status_code}"


def deliver_due_webhooks() -> int:
    """Send every webhook that is due; returns how many were delivered."""
    with session_scope() as session:
        due = webhooks.lease_due_deliveries(session)
    delivered = 0
    for delivery in due:
        error = _send(delivery)
        if error:
            log.warning("webhook for %s, attempt %d: %s", delivery.evaluation_id, delivery.attempt, error)
        delivered += error is None
        with session_scope() as session:
            webhooks.record_delivery(session, delivery, error)
    return delivered
