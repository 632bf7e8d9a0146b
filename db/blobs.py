"""Content-addressed blobs: stored once in the database, cached on each worker's disk.

A blob lives while a live model or dataset, or an unfinished sweep, refers to it;
the scheduler reclaims the others (`reclaim_blobs`) and workers drop them from
their disk caches (`prune_cache`). Whoever starts referring to a stored blob
(an upload, a new sweep) takes a key-share lock on it first (`hold_blob`), so a
reclaim, which locks the blob and asks again, cannot delete it from under them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select, union, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import Blob, Dataset, Evaluation, Model

log = logging.getLogger(__name__)
ACTIVE = ("queued", "running")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put_blob(session: Session, data: bytes) -> str:
    """Store `data` unless identical bytes are already stored; return its sha256."""
    digest = sha256_bytes(data)
    if not hold_blob(session, digest):
        session.add(Blob(sha256=digest, size=len(data), data=data))
        session.flush()
    return digest


def hold_blob(session: Session, digest: str) -> bool:
    """Whether the blob is stored; if so it stays (a key-share lock) until this transaction ends."""
    return session.execute(
        select(Blob.sha256).where(Blob.sha256 == digest).with_for_update(read=True, key_share=True)
    ).first() is not None


def tenant_blobs(tenant_id: str) -> Any:
    """The distinct blobs of a tenant's live models and datasets (a shared blob once)."""
    return union(
        select(Model.sha256.label("sha256")).where(Model.tenant_id == tenant_id, Model.deleted_at.is_(None)),
        select(Dataset.images_blob).where(Dataset.tenant_id == tenant_id, Dataset.deleted_at.is_(None)),
        select(Dataset.targets_blob).where(Dataset.tenant_id == tenant_id, Dataset.deleted_at.is_(None)),
    ).subquery()


def stored_bytes(session: Session, tenant_id: str, adding: dict[str, int] | None = None) -> int:
    """Bytes of the tenant's live blobs, plus those of `adding` (digest -> size) it does not hold yet."""
    held = tenant_blobs(tenant_id)
    total = session.execute(
        select(func.coalesce(func.sum(Blob.size), 0)).where(Blob.sha256.in_(select(held.c.sha256)))
    ).scalar_one()
    if adding:
        known = set(session.execute(
            select(held.c.sha256).where(held.c.sha256.in_(list(adding)))
        ).scalars())
        total += sum(size for digest, size in adding.items() if digest not in known)
    return int(total)


def _needed() -> Any:
    """Blobs something still needs: live models and datasets, and those of unfinished sweeps."""
    active = select(Evaluation.model_id, Evaluation.dataset_id).where(Evaluation.status.in_(ACTIVE)).subquery()
    model_live = Model.deleted_at.is_(None) | (Model.status == "validating") | Model.id.in_(
        select(active.c.model_id))
    dataset_live = Dataset.deleted_at.is_(None) | Dataset.id.in_(select(active.c.dataset_id))
    return union(
        select(Model.sha256.label("sha256")).where(model_live),
        select(Dataset.images_blob).where(dataset_live),
        select(Dataset.targets_blob).where(dataset_live),
    ).subquery()


def reclaim_blobs(session: Session) -> int:
    """Delete the blobs nothing needs any more; how many.

    Deleted models and datasets keep their rows (their sweeps stay readable) with
    the reference cleared. Each blob goes in its own transaction: one that a new
    upload took meanwhile fails its foreign key and stays.
    """
    needed = _needed()
    doomed = list(session.execute(
        select(Blob.sha256).where(Blob.sha256.not_in(select(needed.c.sha256).where(needed.c.sha256.is_not(None))))
    ).scalars())
    reclaimed = 0
    for digest in doomed:
        # Locked, then asked again: whoever held the blob (a new upload, a new sweep) has committed by now.
        session.execute(select(Blob.sha256).where(Blob.sha256 == digest).with_for_update()).all()
        if session.execute(select(needed.c.sha256).where(needed.c.sha256 == digest)).first() is not None:
            session.rollback()
            continue
        session.execute(update(Model).where(Model.sha256 == digest, Model.deleted_at.is_not(None))
                        .values(sha256=None))
        for column in (Dataset.images_blob, Dataset.targets_blob):
            session.execute(update(Dataset).where(column == digest, Dataset.deleted_at.is_not(None))
                            .values({column: None}))
        session.execute(delete(Blob).where(Blob.sha256 == digest))
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            log.info("blob %s was taken by a new upload while being reclaimed; it stays", digest)
        else:
            reclaimed += 1
    return reclaimed


def prune_cache(session: Session, cache_dir: Path) -> int:
    """Remove from a worker's disk cache the blobs no longer stored; how many files."""
    files = [path for path in cache_dir.glob("??/*") if not path.name.startswith(".")]
    if not files:
        return 0
    stored = set(session.execute(
        select(Blob.sha256).where(Blob.sha256.in_([path.name for path in files]))
    ).scalars())
    removed = 0
    for path in files:
        if path.name not in stored:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def blob_path(session: Session, digest: str, cache_dir: Path) -> Path:
    """A local file holding the blob, written to `cache_dir` on first use."""
    path = cache_dir / digest[:2] / digest
    if path.exists():
        return path
    data = session.execute(select(Blob.data).where(Blob.sha256 == digest)).scalar_one()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so a concurrent reader never sees half a file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)
    return path
