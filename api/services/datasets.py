"""Dataset commands: ingest an upload, list, fetch, delete, and seed the built-ins."""

from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from api.http.errors import NotFound, Unprocessable
from api.http.pagination import paginate
from api.http.settings import current_settings
from api.services.ingest import DatasetError, ParsedDataset, digits, parse_dataset, to_npy_bytes, upload_limits
from api.services.quotas import check_storage, lock_tenant
from db.blobs import hold_blob, put_blob, sha256_bytes
from db.models import Blob, Dataset, utcnow

BUILTINS = {"digits": digits}


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _store(session: Session, parsed: ParsedDataset, *, tenant_id: str | None, name: str,
           sha256: str, builtin: bool = False) -> Dataset:
    images = parsed.images
    images_bytes, targets_bytes = parsed.stored_images(), to_npy_bytes(parsed.targets)
    if tenant_id is not None:
        lock_tenant(session, tenant_id)
        check_storage(session, tenant_id, {sha256_bytes(images_bytes): len(images_bytes),
                                           sha256_bytes(targets_bytes): len(targets_bytes)})
    dataset = Dataset(
        tenant_id=tenant_id,
        name=name,
        builtin=builtin,
        task=parsed.task,
        sha256=sha256,
        images_blob=put_blob(session, images_bytes),
        targets_blob=put_blob(session, targets_bytes),
        num_samples=images.shape[0],
        channels=images.shape[3],
        height=images.shape[1],
        width=images.shape[2],
        num_classes=parsed.num_classes,
        max_label=parsed.max_label,
    )
    session.add(dataset)
    session.flush()
    return dataset


def _stored_copy(session: Session, sha256: str) -> Dataset | None:
    """A dataset already parsed from a file with these bytes (any tenant's: arrays are content).

    Its blobs are held (db.blobs.hold_blob) so a reclaim cannot delete them under the copy.
    """
    for known in session.execute(
        select(Dataset).where(Dataset.sha256 == sha256, Dataset.builtin.is_(False),
                              Dataset.images_blob.is_not(None), Dataset.targets_blob.is_not(None)).limit(4)
    ).scalars():
        if hold_blob(session, known.images_blob) and hold_blob(session, known.targets_blob):
            return known
    return None


def create_dataset(session: Session, tenant_id: str, name: str, path: Path, filename: str) -> tuple[Dataset, bool]:
    """Parse and store an uploaded dataset file; the same bytes again reuse the stored arrays, and
    under the same name return the stored dataset (False)."""
    if name in BUILTINS:
        raise Unprocessable(f"'{name}' is the name of a built-in dataset; upload yours under another name",
                            errors=[{"field": "name", "message": "the name of a built-in dataset"}])
    sha256 = _file_sha256(path)
    same = session.execute(
        select(Dataset).where(*_visible(tenant_id), Dataset.tenant_id == tenant_id, Dataset.name == name,
                              Dataset.sha256 == sha256).limit(1)
    ).scalars().first()
    if same is not None:
        return same, False
    # Refused before parsing when the tenant is already full; the exact check comes with the blobs' sizes.
    check_storage(session, tenant_id, {})
    known = _stored_copy(session, sha256)
    if known is not None:
        lock_tenant(session, tenant_id)
        check_storage(session, tenant_id, _blob_sizes(session, known))
        dataset = Dataset(
            tenant_id=tenant_id, name=name, builtin=False, task=known.task, sha256=sha256,
            images_blob=known.images_blob, targets_blob=known.targets_blob,
            num_samples=known.num_samples, channels=known.channels, height=known.height,
            width=known.width, num_classes=known.num_classes, max_label=known.max_label,
        )
        session.add(dataset)
        session.flush()
        return dataset, True
    try:
        parsed = parse_dataset(path, upload_limits(current_settings().max_decoded_bytes))
    except DatasetError as exc:
        raise Unprocessable(f"the dataset file '{filename}' was not accepted: {exc}") from None
    return _store(session, parsed, tenant_id=tenant_id, name=name, sha256=sha256), True


def _blob_sizes(session: Session, dataset: Dataset) -> dict[str, int]:
    digests = [dataset.images_blob, dataset.targets_blob]
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
            _store(session, parsed, tenant_id=None, name=name, sha256=sha256, builtin=True)


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
