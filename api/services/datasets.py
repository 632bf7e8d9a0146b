"""Dataset commands: ingest an upload, list, fetch, delete, and seed the built-ins."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from api.http.errors import NotFound, Unprocessable
from api.http.pagination import paginate
from api.http.settings import current_settings
from api.services.quotas import check_storage, lock_tenant
from api.http.uploads import Upload
from db.blobs import hold_blob, put_blob_file
from db.models import Blob, Dataset, utcnow
from db.session import session_scope
from core.queue import enqueue_dataset_ingestion
from core.dataset_arrays import DatasetError, to_npy_bytes, upload_limits
from core.ingest import digits, open_zip, size_problem
from core.preprocess import parse_preprocess
from db.datasets import store_arrays

log = logging.getLogger(__name__)
BUILTINS = {"digits": digits}
_COPIED = ("task", "images_blob", "targets_blob", "files_blob", "class_names", "num_samples", "channels",
           "height", "width", "num_classes", "max_label")


def _stored_copy(session: Session, sha256: str, preprocess: dict | None) -> Dataset | None:
    """A ready dataset already made from these bytes with this preprocess (any tenant's: arrays are content).

    Its blobs are held (db.blobs.hold_blob) so a reclaim cannot delete them under the copy.
    """
    for known in session.execute(
        select(Dataset).where(Dataset.sha256 == sha256, Dataset.builtin.is_(False), Dataset.status == "ready",
                              Dataset.images_blob.is_not(None), Dataset.targets_blob.is_not(None)).limit(8)
    ).scalars():
        blobs = [known.images_blob, known.targets_blob] + ([known.files_blob] if known.files_blob else [])
        if known.preprocess == preprocess and all(hold_blob(session, digest) for digest in blobs):
            return known
    return None


def _preprocess(raw: dict | None, upload: Upload) -> dict | None:
    """The declared preprocess in its stored form; a 422 when it is malformed or the file is an NPZ."""
    try:
        preprocess = parse_preprocess(raw)
    except DatasetError as exc:
        raise Unprocessable(str(exc), errors=[{"field": "preprocess", "message": str(exc)}]) from None
    if not preprocess:
        return None
    if _is_npz(upload.path):
        message = "'preprocess' applies to image folders only; resize an NPZ's images before saving it"
        raise Unprocessable(message, errors=[{"field": "preprocess", "message": message}])
    return preprocess.as_json()


def _refuse_mixed_sizes(upload: Upload, raw_preprocess: dict | None) -> None:
    """A 422 when an image folder's images would not store at one size: told while the client waits,
    from the images' headers, rather than later as an invalid dataset (the ingestion checks the rest)."""
    problem = size_problem(upload.path, upload_limits(current_settings().max_decoded_bytes),
                           parse_preprocess(raw_preprocess))
    if problem:
        raise Unprocessable(problem, errors=[{"field": "file", "message": problem}])


def _is_npz(path: Path) -> bool:
    with path.open("rb") as handle:
        if not handle.read(4).startswith(b"PK"):
            return False
    try:
        with open_zip(path, upload_limits(current_settings().max_decoded_bytes)) as archive:
            names = [info.filename for info in archive.infolist() if not info.is_dir()]
    except DatasetError:
        return False  # the worker says what is wrong with it
    return bool(names) and all(name.endswith(".npy") for name in names)


def create_dataset(session: Session, tenant_id: str, name: str, upload: Upload,
                   raw_preprocess: dict | None = None) -> tuple[Dataset, str]:
    """Store an uploaded dataset file for a worker to ingest ('processing'); the same bytes and preprocess
    again reuse the stored arrays ('copied'), and under the same name return that dataset ('existing')."""
    if name in BUILTINS:
        raise Unprocessable(f"'{name}' is the name of a built-in dataset; upload yours under another name",
                            errors=[{"field": "name", "message": "the name of a built-in dataset"}])
    preprocess = _preprocess(raw_preprocess, upload)
    for same in session.execute(
        select(Dataset).where(*_visible(tenant_id), Dataset.tenant_id == tenant_id, Dataset.name == name,
                              Dataset.sha256 == upload.sha256, Dataset.status != "invalid")
    ).scalars():
        if same.preprocess == preprocess:
            return same, "existing"
    known = _stored_copy(session, upload.sha256, preprocess)
    if known is not None:
        lock_tenant(session, tenant_id)
        check_storage(session, tenant_id, _blob_sizes(session, known))
        dataset = Dataset(tenant_id=tenant_id, name=name, builtin=False, sha256=upload.sha256, status="ready",
                          preprocess=preprocess, **{key: getattr(known, key) for key in _COPIED})
        outcome = "copied"
    else:
        _refuse_mixed_sizes(upload, raw_preprocess)
        # Refused before the copy when it would not fit; the copy (minutes for GBs) then runs without the
        # tenant's lock, so the tenant's other requests do not wait for it, and the check is made again under it.
        check_storage(session, tenant_id, {upload.sha256: upload.size})
        upload_blob = put_blob_file(session, upload.path, upload.sha256)
        lock_tenant(session, tenant_id)
        check_storage(session, tenant_id, {upload.sha256: upload.size})
        dataset = Dataset(tenant_id=tenant_id, name=name, builtin=False, sha256=upload.sha256,
                          status="processing", preprocess=preprocess, filename=upload.filename[:300],
                          upload_blob=upload_blob)
        outcome = "processing"
    session.add(dataset)
    session.flush()
    return dataset, outcome


def upload_dataset(tenant_id: str, name: str, upload: Upload, raw_preprocess: dict | None) -> tuple[Dataset, str]:
    """Commit the dataset row, then queue its ingestion on a worker when it needs one."""
    with session_scope() as session:
        dataset, outcome = create_dataset(session, tenant_id, name, upload, raw_preprocess)
    if outcome == "processing":
        try:
            enqueue_dataset_ingestion(dataset.id)
        except Exception:  # noqa: BLE001 — the row is committed; the reconciler sends it again (README, Production)
            log.exception("could not enqueue ingestion of dataset %s", dataset.id)
    return dataset, outcome


def _blob_sizes(session: Session, dataset: Dataset) -> dict[str, int]:
    digests = [d for d in (dataset.images_blob, dataset.targets_blob, dataset.files_blob) if d]
    rows = session.execute(select(Blob.sha256, Blob.size).where(Blob.sha256.in_(digests))).all()
    return {digest: size for digest, size in rows}


def ensure_builtin_datasets(session: Session) -> None:
    """Store the built-in datasets once (the one-shot migration step calls this)."""
    for name, load in BUILTINS.items():
        exists = session.execute(
            select(Dataset.id).where(Dataset.builtin.is_(True), Dataset.name == name)
        ).first()
        if exists is None:
            parsed = load()
            sha256 = hashlib.sha256(to_npy_bytes(parsed.images) + to_npy_bytes(parsed.targets)).hexdigest()
            dataset = Dataset(tenant_id=None, name=name, builtin=True, sha256=sha256, status="ready")
            store_arrays(session, dataset, parsed)
            session.add(dataset)
            session.flush()


def _visible(tenant_id: str):
    return (
        or_(Dataset.tenant_id == tenant_id, Dataset.builtin.is_(True)),
        Dataset.deleted_at.is_(None),
    )


def get_dataset(session: Session, tenant_id: str, ref: str) -> Dataset:
    """A dataset the tenant can see, by id, or by name (a built-in's, else the newest of the tenant's); 404 otherwise."""
    dataset = session.execute(
        select(Dataset).where(*_visible(tenant_id), Dataset.name == ref)
        .order_by(Dataset.builtin.desc(), Dataset.created_at.desc(), Dataset.id.desc()).limit(1)
    ).scalars().first()
    by_id = session.execute(select(Dataset).where(*_visible(tenant_id), Dataset.id == ref)).scalars().first()
    dataset = by_id or dataset
    if dataset is None:
        raise NotFound(f"no dataset with id or name '{ref}'; GET /v1/datasets lists yours and the built-ins")
    return dataset


def list_datasets(session: Session, tenant_id: str, limit: int, cursor: str | None, name: str | None = None):
    stmt = select(Dataset).where(*_visible(tenant_id))
    if name is not None:
        stmt = stmt.where(Dataset.name == name)
    return paginate(session, stmt, Dataset, limit, cursor)


def delete_dataset(session: Session, tenant_id: str, dataset_id: str) -> None:
    dataset = get_dataset(session, tenant_id, dataset_id)
    if dataset.builtin:
        raise Unprocessable("built-in datasets cannot be deleted")
    dataset.deleted_at = utcnow()
