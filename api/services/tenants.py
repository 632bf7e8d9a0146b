"""Tenant queries."""

from __future__ import annotations

from typing import Any

from db.models import Tenant
from db.session import session_scope


def tenant_info(tenant_id: str) -> dict[str, Any]:
    """The tenant's id, name and webhook secret."""
    with session_scope() as session:
        tenant = session.get(Tenant, tenant_id)
        return {"id": tenant.id, "name": tenant.name, "webhook_secret": tenant.webhook_secret}
