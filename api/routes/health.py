"""Liveness and readiness."""

from __future__ import annotations

from flask import Blueprint, jsonify

from api.http import responses
from api.http.openapi import Reply, operation
from api.services.health import readiness

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@operation("Liveness", tag="health", responses={200: Reply("alive", responses.Health)})
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
@operation("Readiness: database and broker reachable", tag="health", responses={
    200: Reply("ready", responses.Readiness), 503: Reply("not ready", responses.Readiness)})
def readyz():
    checks = readiness()
    ready = all(value == "ok" for value in checks.values())
    return jsonify(status="ok" if ready else "unavailable", checks=checks), 200 if ready else 503
