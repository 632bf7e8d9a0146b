"""Per-tenant quotas: sweeps waiting to start and stored bytes (429 with Retry-After beyond them).

Sweeps running at once are bounded where they start, by the fair scheduler
(db.jobs.claim_next_chunk): beyond SHIFTSCORE_QUOTA_RUNNING a sweep waits, queued.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.http.errors import TooManyRequests
from api.http.settings import current_settings
from db.blobs import stored_bytes
from db.models import Evaluation, Tenant

# A queued sweep starts when one of the tenant's running sweeps ends; a part of a sweep is
# seconds to minutes, so asking again in half a minute is neither hammering nor slow.
QUEUED_RETRY_AFTER_S = 30
# Storage frees when the tenant deletes models or datasets; a minute leaves time to do that.
STORAGE_RETRY_AFTER_S = 60


def lock_tenant(session: Session, tenant_id: str) -> None:
    """Serialize one tenant's quota checks with its writes (a row lock until the transaction ends)."""
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update(key_share=True)).all()


def check_queued(session: Session, tenant_id: str) -> None:
    """Refuse a new sweep while the tenant has SHIFTSCORE_QUOTA_QUEUED sweeps waiting to start."""
    limit = current_settings().quota_queued
    queued = session.execute(
        select(func.count()).select_from(Evaluation)
        .where(Evaluation.tenant_id == tenant_id, Evaluation.status == "queued")
    ).scalar_one()
    if queued >= limit:
        raise TooManyRequests(
            f"you have {queued} sweeps waiting to start, the limit per tenant (SHIFTSCORE_QUOTA_QUEUED="
            f"{limit}); submit again once some have started or finished, or cancel some "
            "(POST /v1/evaluations/{id}/cancel)", retry_after=QUEUED_RETRY_AFTER_S)


def check_storage(session: Session, tenant_id: str, adding: dict[str, int]) -> None:
    """Refuse an upload that would take the tenant's stored bytes past SHIFTSCORE_QUOTA_STORAGE.

    `adding` maps the upload's blobs (sha256) to their sizes; blobs the tenant already holds count once.
    """
    limit = current_settings().quota_storage_bytes
    total = stored_bytes(session, tenant_id, adding)
    if total > limit:
        raise TooManyRequests(
            f"this upload would bring your stored models and datasets to {total} bytes, over the limit "
            f"per tenant of {limit} bytes (SHIFTSCORE_QUOTA_STORAGE); delete models or datasets you no "
            "longer need (DELETE /v1/models/{id}, DELETE /v1/datasets/{id}) and upload again",
            retry_after=STORAGE_RETRY_AFTER_S)
