"""Tenants and their API tokens; only a token's sha256 (and its first characters, to tell it apart) is stored."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from db.models import ApiToken, Tenant, utcnow

# "ss_" and 8 random characters: enough to tell tokens apart in a list, 48 of the 256 secret bits.
PREFIX_CHARS = 11
# A shorter id or prefix given to `token revoke` could match a token by accident.
MIN_MATCH_CHARS = 6


class TokenRejected(Exception):
    """A bearer token that authenticates no one; the message says why."""


@dataclass(frozen=True)
class TokenInfo:
    """What `shiftscore token list` shows of a token: never the secret."""

    id: str
    prefix: str | None
    tenant: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    @property
    def state(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= utcnow():
            return "expired"
        return "active"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _aware(moment: datetime | None) -> datetime | None:
    # SQLite returns naive datetimes; every stored time is UTC.
    return moment.replace(tzinfo=timezone.utc) if moment is not None and moment.tzinfo is None else moment


def create_token(session: Session, tenant_name: str, expires_at: datetime | None = None) -> str:
    """A new token for `tenant_name`, creating the tenant on first use; valid until `expires_at` if given."""
    tenant = session.execute(select(Tenant).where(Tenant.name == tenant_name)).scalar_one_or_none()
    if tenant is None:
        tenant = Tenant(name=tenant_name, webhook_secret=secrets.token_hex(32))
        session.add(tenant)
        session.flush()
    token = "ss_" + secrets.token_urlsafe(32)
    session.add(ApiToken(tenant_id=tenant.id, token_sha256=_digest(token), token_prefix=token[:PREFIX_CHARS],
                         expires_at=expires_at))
    session.flush()
    return token


def tenant_for_token(session: Session, token: str) -> Tenant:
    """The tenant a bearer token belongs to; raises TokenRejected for an unknown, revoked or expired one."""
    row = session.execute(
        select(ApiToken, Tenant).join(Tenant, ApiToken.tenant_id == Tenant.id).where(
            ApiToken.token_sha256 == _digest(token)
        )
    ).one_or_none()
    if row is None:
        raise TokenRejected("the bearer token is not valid")
    api_token, tenant = row
    renew = f"ask for a new one ('shiftscore token create {tenant.name}')"
    if api_token.revoked_at is not None:
        raise TokenRejected(f"this token was revoked at {_aware(api_token.revoked_at).isoformat()}; {renew}")
    expires_at = _aware(api_token.expires_at)
    if expires_at is not None and expires_at <= utcnow():
        raise TokenRejected(f"this token expired at {expires_at.isoformat()}; {renew}")
    return tenant


def _info(api_token: ApiToken, tenant_name: str) -> TokenInfo:
    return TokenInfo(id=api_token.id, prefix=api_token.token_prefix, tenant=tenant_name,
                     created_at=_aware(api_token.created_at), expires_at=_aware(api_token.expires_at),
                     revoked_at=_aware(api_token.revoked_at))


def list_tokens(session: Session, tenant_name: str | None = None) -> list[TokenInfo]:
    """Every token (or those of one tenant), oldest first."""
    query = select(ApiToken, Tenant.name).join(Tenant, ApiToken.tenant_id == Tenant.id)
    if tenant_name is not None:
        query = query.where(Tenant.name == tenant_name)
    rows = session.execute(query.order_by(ApiToken.created_at, ApiToken.id)).all()
    return [_info(api_token, name) for api_token, name in rows]


def revoke_token(session: Session, id_or_prefix: str) -> tuple[TokenInfo, bool]:
    """Revoke the one token whose id or shown prefix starts with `id_or_prefix` (or the whole token);
    returns (the token, whether it was revoked just now).
    Raises LookupError when none or several match."""
    if len(id_or_prefix) < MIN_MATCH_CHARS:
        raise LookupError(f"give at least {MIN_MATCH_CHARS} characters of the token's id or prefix")
    pattern = id_or_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    rows = session.execute(
        select(ApiToken, Tenant.name).join(Tenant, ApiToken.tenant_id == Tenant.id).where(
            or_(ApiToken.id.like(pattern, escape="\\"), ApiToken.token_prefix.like(pattern, escape="\\"),
                ApiToken.token_sha256 == _digest(id_or_prefix))
        )
    ).all()
    if not rows:
        raise LookupError(f"no token has an id or prefix starting with '{id_or_prefix}'; "
                          "see 'shiftscore token list'")
    if len(rows) > 1:
        raise LookupError(f"{len(rows)} tokens match '{id_or_prefix}'; give more of the id")
    api_token, tenant_name = rows[0]
    newly = api_token.revoked_at is None
    if newly:
        api_token.revoked_at = utcnow()
        session.flush()
    return _info(api_token, tenant_name), newly
