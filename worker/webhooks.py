"""Deliver evaluation webhooks: a signed JSON POST to the URL given at submission.

The receiver verifies `X-ShiftScore-Signature: t=<unix time>,v1=<hex>` where
hex = HMAC-SHA256(tenant webhook secret, f"{t}.{raw body}"); the secret is at
GET /v1/tenant. Delivery is at least once: the body's `delivery_id` lets a
receiver drop repeats. Each attempt is a Celery task on the webhook queue
(worker/tasks.py); the scheduler only queues the deliveries that are due.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import socket
import ssl
import threading
import time
from datetime import timedelta

from core.egress import EgressRefused, Target, resolve
from core.queue import enqueue_webhook
from core.settings import Settings, get_settings
from db import webhooks
from db.models import Evaluation
from db.session import session_scope

log = logging.getLogger(__name__)


class DeliveryFailed(Exception):
    """An attempt that failed and should be tried again later (Celery retries on it)."""


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


class DeadlinePassed(Exception):
    """The receiver took longer than the delivery's deadline in all."""


def post(target: Target, body: bytes, headers: dict[str, str], deadline_s: float,
         tls: ssl.SSLContext | None = None) -> int:
    """POST `body` to the target's checked address, all of it within `deadline_s`; the status code.

    `tls` verifies an https receiver (default: the system's trust store, read when the call makes it).
    """
    family = socket.AF_INET6 if ":" in target.address else socket.AF_INET
    held = [socket.socket(family, socket.SOCK_STREAM)]
    expired = threading.Event()

    def cut() -> None:
        # A per-read timeout never fires on a receiver that drips a byte at a time; shutting
        # the socket ends whatever connect, write or read is blocked on it, TLS included.
        expired.set()
        try:
            held[0].shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    timer = threading.Timer(deadline_s, cut)
    timer.start()
    try:
        held[0].settimeout(deadline_s)
        held[0].connect((target.address, target.port))
        if target.scheme == "https":
            # SNI and the certificate check use the URL's host, though we connect by address.
            context = tls or ssl.create_default_context()
            held[0] = context.wrap_socket(held[0], server_hostname=target.host)
        host = f"[{target.host}]" if ":" in target.host else target.host
        default_port = 443 if target.scheme == "https" else 80
        connection = http.client.HTTPConnection(target.host, target.port)
        connection.sock = held[0]  # already connected: http.client neither resolves nor connects again
        connection.request("POST", target.path, body=body, headers={
            **headers, "Host": host if target.port == default_port else f"{host}:{target.port}",
            "Connection": "close",
        })
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException):
        if not expired.is_set():
            raise
    finally:
        timer.cancel()
        held[0].close()
    # Checked after a "success" too: a response cut off mid-headers may still parse.
    if expired.is_set():
        raise DeadlinePassed(f"the receiver did not answer within the {deadline_s:g} s deadline")
    return status


def _send(delivery: webhooks.Delivery, settings: Settings) -> str | None:
    """POST once; None on a 2xx answer, else what went wrong."""
    try:
        # Checked again at delivery: the name may resolve elsewhere now than at submission.
        target = resolve(delivery.url, settings.webhook_allow_hosts)
    except EgressRefused as exc:
        return f"not sent: {exc}"[:500]
    body = _payload(delivery)
    timestamp = int(time.time())
    try:
        status = post(target, body, {
            "Content-Type": "application/json",
            "User-Agent": "ShiftScore-Webhook/1",
            "X-ShiftScore-Signature": signature(delivery.secret, timestamp, body),
            "X-ShiftScore-Attempt": str(delivery.attempt),
        }, settings.webhook_deadline_s)
    except DeadlinePassed as exc:
        return str(exc)
    except (OSError, http.client.HTTPException) as exc:
        return f"{type(exc).__name__}: {exc}"[:500]
    if 200 <= status < 300:
        return None
    return f"the receiver answered HTTP {status}"


def deliver(evaluation_id: str, attempt: int, settings: Settings | None = None) -> None:
    """Make attempt number `attempt`; raises DeliveryFailed when a later attempt should follow."""
    settings = settings or get_settings()
    with session_scope() as session:
        delivery = webhooks.claim(session, evaluation_id, attempt, timedelta(seconds=settings.webhook_deadline_s))
    if delivery is None:
        return  # a duplicate message: this attempt was made already
    error = _send(delivery, settings)
    with session_scope() as session:
        webhooks.record_delivery(session, delivery, error)
    if error is None:
        return
    log.warning("webhook for %s, attempt %d: %s", evaluation_id, attempt, error)
    if attempt < webhooks.MAX_ATTEMPTS:
        raise DeliveryFailed(error)


def enqueue_due_webhooks() -> int:
    """Queue every delivery that is due (first attempts, and those whose message was lost)."""
    with session_scope() as session:
        due = webhooks.take_due(session)
    for evaluation_id, attempt in due:
        enqueue_webhook(evaluation_id, attempt)
    return len(due)
