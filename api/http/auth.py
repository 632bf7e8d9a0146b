"""Bearer-token authentication for /v1: each token belongs to one tenant."""

from __future__ import annotations

import hmac

from flask import Flask, g, request

from api.http.errors import Forbidden, Unauthorized
from core.settings import Settings
from db.session import session_scope
from db.tenants import TokenRejected, tenant_for_token


def _bearer() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def register_auth(app: Flask) -> None:
    @app.before_request
    def _authenticate() -> None:
        if not request.path.startswith("/v1/") and request.path != "/v1":
            return
        token = _bearer()
        if token is None:
            raise Unauthorized("send 'Authorization: Bearer <token>'; create a token with "
                               "'shiftscore token create TENANT'")
        with session_scope() as session:
            try:
                g.tenant_id = tenant_for_token(session, token).id
            except TokenRejected as exc:
                raise Unauthorized(str(exc)) from None


def current_tenant() -> str:
    """The id of the tenant making this request."""
    return g.tenant_id


def check_metrics_access(settings: Settings) -> None:
    """Let a scrape of /metrics through, or raise: its totals span every tenant."""
    if settings.metrics_token:
        token = _bearer()
        if token is None or not hmac.compare_digest(token.encode(), settings.metrics_token.encode()):
            raise Unauthorized("/metrics needs 'Authorization: Bearer <SHIFTSCORE_METRICS_TOKEN>' "
                               "(the token the server was started with, not a tenant's)")
    elif not settings.metrics_public:
        raise Forbidden("/metrics is closed: start the API with SHIFTSCORE_METRICS_TOKEN set and scrape with "
                        "'Authorization: Bearer <that token>', or set SHIFTSCORE_METRICS_PUBLIC=true where "
                        "only trusted clients reach the API")
