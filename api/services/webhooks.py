"""Webhook rules at submission: a webhook_url must reach a public address or an allow-listed one."""

from __future__ import annotations

from api.http.errors import Unprocessable
from api.http.settings import current_settings
from core.egress import EgressRefused, resolve


def check_webhook_url(url: str) -> None:
    """Refuse (422) a URL whose host is, or resolves to, a loopback, private or other internal address."""
    try:
        resolve(url, current_settings().webhook_allow_hosts)
    except EgressRefused as exc:
        raise Unprocessable(str(exc), errors=[{"field": "webhook_url", "message": str(exc)}]) from None
