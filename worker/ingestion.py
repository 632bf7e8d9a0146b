"""Ingest an uploaded dataset on a worker: parse, check and convert the stored upload, then mark it.

The API stores the upload as a blob and answers `processing`; here the upload is fetched
to this host's cache as a stream, parsed with the images written to a .npy on disk a
block (an NPZ) or an image (a folder) at a time, stored as blobs, and the dataset becomes
`ready`, or `invalid` with the parser's message. Torch is never needed. A dataset deleted
meanwhile is left as it is (its upload is reclaimed like any unreferenced blob).

Ingestion holds a lease like a chunk (db.leases, taken by db.datasets.claim_ingestion): a
second message for a dataset that is held or done does nothing; a worker lost midway
stops beating, and after SHIFTSCORE_STALE_AFTER the reconciler sends the dataset again and
another worker starts again from the upload; one started SHIFTSCORE_MAX_ATTEMPTS times
becomes invalid instead of coming back.
"""

from __future__ import annotations

import logging
import tempfile
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db import leases
from db.blobs import blob_path, hold_blob, stored_bytes
from db.models import Dataset, Tenant
from db.session import session_scope
from core.dataset_arrays import DatasetError, ParsedDataset, upload_limits
from core.ingest import parse_dataset
from core.preprocess import parse_preprocess
from core.settings import Settings, get_settings
from db.datasets import claim_ingestion, store_arrays
from worker.heartbeat import Heartbeat

log = logging.getLogger(__name__)


def ingest_dataset(dataset_id: str, worker: str) -> None:
    """Turn a `processing` dataset's upload into its stored arrays; anything else is left alone."""
    settings = get_settings()
    with session_scope() as session:
        lease = claim_ingestion(session, dataset_id, worker, timedelta(seconds=settings.stale_after_s),
                                settings.max_attempts)
    if lease is None:
        return
    # Beating from the claim on: streaming a large upload here alone can outlast SHIFTSCORE_STALE_AFTER.
    with Heartbeat(partial(_beat, lease), max(0.1, settings.stale_after_s / 4)):
        fetched = _fetch_upload(lease, settings.storage_dir / "cache")
        if fetched is None:
            return
        upload, filename, preprocess = fetched
        _ingest(lease, upload, filename, preprocess, settings)
    # The upload is no longer needed here once its arrays are stored (the scheduler reclaims the blob).
    upload.unlink(missing_ok=True)


def _fetch_upload(lease: leases.Lease, cache: Path) -> tuple[Path, str, dict[str, Any] | None] | None:
    """The upload as a local file, its name and declared preprocess; None when there is nothing to ingest."""
    with session_scope() as session:
        dataset = session.execute(select(Dataset).where(*leases.held(leases.INGESTION, lease))).scalar_one_or_none()
        if dataset is None:
            return None
        if dataset.deleted_at is not None or dataset.upload_blob is None or not hold_blob(session, dataset.upload_blob):
            _drop(session, lease)
            return None
        # The key-share lock of hold_blob lasts while the upload streams here: a reclaim waits for it.
        return blob_path(session, dataset.upload_blob, cache), dataset.filename or "upload", dataset.preprocess


def _ingest(lease: leases.Lease, upload: Path, filename: str, preprocess: dict[str, Any] | None,
            settings: Settings) -> None:
    """Parse the upload and record what came of it: the arrays, or the reason the dataset is invalid."""
    work = settings.storage_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    # On the storage disk, not /tmp (often memory-backed): the images are written here first.
    with tempfile.TemporaryDirectory(dir=work, prefix="ingest-") as folder:
        try:
            parsed = parse_dataset(upload, upload_limits(settings.max_decoded_bytes), Path(folder) / "images.npy",
                                   parse_preprocess(preprocess))
        except DatasetError as exc:
            _finish(lease, None, f"the dataset file '{filename}' was not accepted: {exc}")
        except Exception:  # noqa: BLE001 — a fault here must not leave the dataset processing for ever
            log.exception("ingesting dataset %s failed", lease.row_id)
            _finish(lease, None, f"the dataset file '{filename}' could not be ingested (an internal error, "
                                 "logged by the worker); upload it again, or report it")
        else:
            _finish(lease, parsed, None)


def _beat(lease: leases.Lease) -> bool:
    with session_scope() as session:
        return leases.beat(session, leases.INGESTION, lease)


def _finish(lease: leases.Lease, parsed: ParsedDataset | None, error: str | None) -> None:
    """Record the outcome, unless the lease was lost (the dataset was taken over, or ended meanwhile)."""
    with session_scope() as session:
        dataset = session.execute(
            select(Dataset).where(*leases.held(leases.INGESTION, lease)).with_for_update()
        ).scalar_one_or_none()
        if dataset is None:
            log.info("dataset %s: ingestion attempt %d lost its lease; nothing recorded", lease.row_id, lease.attempt)
            return
        if dataset.deleted_at is not None:
            _drop(session, lease)
            return
        dataset.upload_blob = None
        if parsed is not None:
            # The arrays are copied in (minutes for GBs) before the tenant's lock is taken, so its other
            # requests do not wait for the copy; a dataset over the quota then takes the copy back.
            savepoint = session.begin_nested()
            store_arrays(session, dataset, parsed)
            error = _over_quota(session, dataset.tenant_id)
            if error is not None:
                savepoint.rollback()
            else:
                savepoint.commit()
        if error is not None:
            dataset.status, dataset.error = "invalid", error
            log.info("dataset %s is invalid: %s", lease.row_id, error)
            return
        dataset.status = "ready"


def _drop(session: Session, lease: leases.Lease) -> None:
    """A dataset deleted before it was ingested: it ends invalid, and nothing is stored for it."""
    log.info("dataset %s was deleted before it was ingested; nothing is stored for it", lease.row_id)
    session.execute(update(Dataset).where(*leases.held(leases.INGESTION, lease))
                    .values(status="invalid", error="deleted before it was ingested", upload_blob=None))


def _over_quota(session: Session, tenant_id: str) -> str | None:
    """Why the tenant is past its storage quota with the arrays just stored, if it is (the upload no longer counts)."""
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update(key_share=True)).all()
    session.flush()
    total = stored_bytes(session, tenant_id)
    limit = get_settings().quota_storage_bytes
    if total > limit:
        return (f"the dataset's arrays would bring your stored models and datasets to {total} bytes, over the "
                f"limit per tenant of {limit} bytes (SHIFTSCORE_QUOTA_STORAGE); delete what you no longer need "
                "and upload again")
    return None
