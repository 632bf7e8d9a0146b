"""/metrics for Prometheus: aggregate counts only, no tenant's data, so no token is asked for."""

from __future__ import annotations

from flask import Blueprint, Response

from api.openapi import Reply, operation
from api.services.metrics import exposition

bp = Blueprint("metrics", __name__)
# The classic text format every Prometheus version reads (generate_latest writes it).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@bp.get("/metrics")
@operation("Prometheus metrics: evaluations by status, sweep throughput, queue depth", tag="health",
           responses={200: Reply("text exposition format 0.0.4", media_type="text/plain")})
def metrics():
    return Response(exposition(), headers={"Content-Type": CONTENT_TYPE})
