"""Tenants and their API tokens; only a token's sha256 is stored."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import ApiToken, Tenant


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, tenant_name: str) -> str:
    """A new token for `tenant_name`, creating the tenant on first use."""
    tenant = session.execute(select(Tenant).where(Tenant.name == tenant_name)).scalar_one_or_none()
    if tenant is None:
        tenant = Tenant(name=tenant_name, webhook_secret=secrets.token_hex(32))
        session.add(tenant)
        session.flush()
    token = "ss_" + secrets.token_urlsafe(32)
    session.add(ApiToken(tenant_id=tenant.id, token_sha256=_digest(token)))
    session.flush()
    return token


def tenant_for_token(session: Session, token: str) -> Tenant | None:
    """The tenant a bearer token belongs to, or None."""
    return session.execute(
        select(Tenant).join(ApiToken, ApiToken.tenant_id == Tenant.id).where(
            ApiToken.token_sha256 == _digest(token)
        )
    ).scalar_one_or_none()
