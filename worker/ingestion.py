"""Ingest an uploaded dataset on a worker: parse, check and convert the stored upload, then mark it.

The API stores the upload as a blob and answers `processing`; here the upload is fetched
to this host's cache as a stream, parsed with the images written to a .npy on disk a
block (an NPZ) or an image (a folder) at a time, stored as blobs, and the dataset becomes
`ready`, or `invalid` with the parser's message. Torch is never needed. A dataset deleted
meanwhile is left as it is (its upload is reclaimed like any unreferenced blob); a worker
lost midway is redelivered the message (acks late) and starts again from the upload.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.blobs import blob_path, hold_blob, stored_bytes
from db.models import Dataset, Tenant
from db.session import session_scope
from core.ingest import DatasetError, ParsedDataset, parse_dataset, upload_limits
from core.preprocess import parse_preprocess
from core.settings import get_settings
from db.datasets import store_arrays

log = logging.getLogger(__name__)


def ingest_dataset(dataset_id: str) -> None:
    """Turn a `processing` dataset's upload into its stored arrays; anything else is left alone."""
    settings = get_settings()
    cache = settings.storage_dir / "cache"
    with session_scope() as session:
        dataset = session.get(Dataset, dataset_id)
        if dataset is None or dataset.status != "processing":
            return
        if dataset.deleted_at is not None or dataset.upload_blob is None or not hold_blob(session, dataset.upload_blob):
            _drop(dataset)
            return
        # The key-share lock of hold_blob lasts while the upload streams here: a reclaim waits for it.
        upload = blob_path(session, dataset.upload_blob, cache)
        preprocess_json, filename = dataset.preprocess, dataset.filename or "upload"
    work = settings.storage_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    # On the storage disk, not /tmp (often memory-backed): the images are written here first.
    with tempfile.TemporaryDirectory(dir=work, prefix="ingest-") as folder:
        try:
            parsed = parse_dataset(upload, upload_limits(settings.max_decoded_bytes), Path(folder) / "images.npy",
                                   parse_preprocess(preprocess_json))
        except DatasetError as exc:
            _finish(dataset_id, None, f"the dataset file '{filename}' was not accepted: {exc}")
        except Exception:  # noqa: BLE001 — a fault here must not leave the dataset processing for ever
            log.exception("ingesting dataset %s failed", dataset_id)
            _finish(dataset_id, None, f"the dataset file '{filename}' could not be ingested (an internal error, "
                                      "logged by the worker); upload it again, or report it")
        else:
            _finish(dataset_id, parsed, None)
    # The upload is no longer needed here once its arrays are stored (the scheduler reclaims the blob).
    upload.unlink(missing_ok=True)


def _finish(dataset_id: str, parsed: ParsedDataset | None, error: str | None) -> None:
    with session_scope() as session:
        dataset = session.execute(select(Dataset).where(Dataset.id == dataset_id).with_for_update()).scalar_one()
        if dataset.status != "processing":
            return
        if dataset.deleted_at is not None:
            _drop(dataset)
            return
        dataset.upload_blob = None
        if parsed is not None:
            error = _over_quota(session, dataset.tenant_id, parsed)
        if error is not None:
            dataset.status, dataset.error = "invalid", error
            log.info("dataset %s is invalid: %s", dataset_id, error)
            return
        store_arrays(session, dataset, parsed)
        dataset.status = "ready"


def _drop(dataset: Dataset) -> None:
    """A dataset deleted before it was ingested: it ends invalid, and nothing is stored for it."""
    log.info("dataset %s was deleted before it was ingested; nothing is stored for it", dataset.id)
    dataset.status, dataset.error, dataset.upload_blob = "invalid", "deleted before it was ingested", None


def _over_quota(session: Session, tenant_id: str, parsed: ParsedDataset) -> str | None:
    """Why the arrays would take the tenant past its storage quota, if they would (the upload no longer counts)."""
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update(key_share=True)).all()
    session.flush()
    size = parsed.images_path.stat().st_size if parsed.images_path else parsed.images.nbytes
    total = stored_bytes(session, tenant_id, {"": size + parsed.targets.nbytes})
    limit = get_settings().quota_storage_bytes
    if total > limit:
        return (f"the dataset's arrays would bring your stored models and datasets to {total} bytes, over the "
                f"limit per tenant of {limit} bytes (SHIFTSCORE_QUOTA_STORAGE); delete what you no longer need "
                "and upload again")
    return None
