"""Bearer-token authentication for /v1: each token belongs to one tenant."""

from __future__ import annotations

from flask import Flask, g, request

from api.errors import Unauthorized
from db.session import session_scope
from db.tenants import TokenRejected, tenant_for_token


def register_auth(app: Flask) -> None:
    @app.before_request
    def _authenticate() -> None:
        if not request.path.startswith("/v1/") and request.path != "/v1":
            return
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("send 'Authorization: Bearer <token>'; create a token with "
                               "'shiftscore token create TENANT'")
        with session_scope() as session:
            try:
                g.tenant_id = tenant_for_token(session, token.strip()).id
            except TokenRejected as exc:
                raise Unauthorized(str(exc)) from None


def current_tenant() -> str:
    """The id of the tenant making this request."""
    return g.tenant_id
