"""/metrics for Prometheus: aggregate counts over every tenant, behind the metrics token (api.http.auth)."""

from __future__ import annotations

from flask import Blueprint, Response

from api.http.auth import check_metrics_access
from api.http.openapi import Reply, operation
from api.http.settings import current_settings
from api.services.metrics import exposition

bp = Blueprint("metrics", __name__)
# The classic text format every Prometheus version reads (generate_latest writes it).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@bp.get("/metrics")
@operation("Prometheus metrics: evaluations by status, sweep throughput, queue depth", tag="health",
           responses={200: Reply("text exposition format 0.0.4", media_type="text/plain"),
                      401: "SHIFTSCORE_METRICS_TOKEN is set and this is not it",
                      403: "no metrics token is set and SHIFTSCORE_METRICS_PUBLIC is off"})
def metrics():
    check_metrics_access(current_settings())
    return Response(exposition(), headers={"Content-Type": CONTENT_TYPE})
