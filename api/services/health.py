"""Readiness: can we reach the database and the broker, and can every worker host sandbox models?"""

from __future__ import annotations

from sqlalchemy import text

from api.http.settings import current_settings
from core.broker import redis_client_url
from core.sandbox_status import reported_failures
from db.session import session_scope


def readiness() -> dict[str, str]:
    """'ok' or the error, per dependency."""
    checks: dict[str, str] = {}
    try:
        with session_scope() as session:
            session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 — reported, not raised
        checks["database"] = f"unreachable: {type(exc).__name__}"
    try:
        import redis

        client = redis.Redis.from_url(redis_client_url(current_settings().broker_url), socket_timeout=2)
        client.ping()
        checks["broker"] = "ok"
        failures = reported_failures(client)
        client.close()
        if failures:
            checks["sandbox"] = "; ".join(f"workers on {host} run no models: {why}" for host, why in failures.items())
    except Exception as exc:  # noqa: BLE001
        checks["broker"] = f"unreachable: {type(exc).__name__}"
    return checks
