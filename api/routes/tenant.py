"""/v1/tenant: who the token belongs to, and the secret that signs its webhooks."""

from __future__ import annotations

from flask import Blueprint, jsonify
from pydantic import BaseModel

from api.http.auth import current_tenant
from api.http.openapi import Reply, operation
from api.services.tenants import tenant_info

bp = Blueprint("tenant", __name__, url_prefix="/v1")


class TenantOut(BaseModel):
    id: str
    name: str
    webhook_secret: str


@bp.get("/tenant")
@operation("The token's tenant and its webhook signing secret", tag="tenant",
           responses={200: Reply("the tenant", TenantOut)})
def show():
    return jsonify(tenant_info(current_tenant()))
