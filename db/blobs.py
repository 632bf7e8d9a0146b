"""Content-addressed blobs: stored once in the database, cached on each worker's disk.

A blob is written and read as a stream of fixed-size chunk rows (`blob_chunks`), so
no single value nears PostgreSQL's 1 GB bytea limit and no process holds a whole
blob in memory; blobs stored before the chunks keep their bytes in `blobs.data`.

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
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from sqlalchemy import delete, func, insert, select, union, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import Blob, BlobChunk, Dataset, Evaluation, Model

log = logging.getLogger(__name__)
ACTIVE = ("queued", "running")
# Every blob a dataset refers to: the upload until it is ingested, then its arrays and file paths.
DATASET_BLOBS = (Dataset.images_blob, Dataset.targets_blob, Dataset.upload_blob, Dataset.files_blob)
# One chunk row: small enough to hold a few in memory, large enough that a 10 GB blob is ~2,500 rows.
CHUNK_BYTES = 4 << 20


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _blocks(stream: IO[bytes]) -> Iterator[bytes]:
    return iter(lambda: stream.read(CHUNK_BYTES), b"")


def put_blob(session: Session, data: bytes | memoryview) -> str:
    """Store small `data` (held in memory anyway) unless identical bytes are stored; its sha256."""
    digest = sha256_bytes(data)
    view = memoryview(data)
    _put_chunks(session, digest, len(view), (bytes(view[i:i + CHUNK_BYTES]) for i in range(0, len(view), CHUNK_BYTES)))
    return digest


def put_blob_file(session: Session, path: Path, digest: str | None = None) -> str:
    """Store a file a chunk at a time (memory bounded by one chunk) unless stored; its sha256.

    `digest` is the file's sha256 when the caller hashed it already (while receiving it).
    """
    digest = digest or file_sha256(path)
    with path.open("rb") as handle:
        _put_chunks(session, digest, path.stat().st_size, _blocks(handle))
    return digest


def _put_chunks(session: Session, digest: str, size: int, chunks: Iterable[bytes]) -> None:
    if hold_blob(session, digest):
        return
    try:
        with session.begin_nested():
            session.add(Blob(sha256=digest, size=size))
    except IntegrityError:
        # The same bytes uploaded at once by another request: this insert waited for its transaction,
        # which stored them. Held like any stored blob; anything else is a real error.
        if hold_blob(session, digest):
            return
        raise
    for seq, chunk in enumerate(chunks):
        session.execute(insert(BlobChunk), [{"sha256": digest, "seq": seq, "data": chunk}])


def read_blob(session: Session, digest: str) -> Iterator[bytes]:
    """The blob's bytes in order, one chunk at a time (a blob from before the chunks, whole)."""
    legacy = session.execute(select(Blob.data).where(Blob.sha256 == digest)).scalar_one()
    if legacy is not None:
        yield legacy
        return
    seq = 0
    while True:
        # One indexed row at a time: memory stays at a chunk whatever the driver buffers.
        chunk = session.execute(
            select(BlobChunk.data).where(BlobChunk.sha256 == digest, BlobChunk.seq == seq)
        ).scalar_one_or_none()
        if chunk is None:
            return
        yield chunk
        seq += 1


def read_blob_range(session: Session, digest: str, start: int, length: int) -> bytes:
    """Bytes [start, start + length) of the blob (fewer past its end), from only the chunk rows holding them.

    Every chunk but the last holds CHUNK_BYTES, so a byte's chunk is its offset // CHUNK_BYTES;
    each row gives only its part (substr), so a read costs its length, not the blob's size.
    """
    if length <= 0:
        return b""
    legacy = session.execute(select(Blob.data.is_not(None)).where(Blob.sha256 == digest)).scalar_one()
    if legacy:
        return bytes(session.execute(
            select(func.substr(Blob.data, start + 1, length)).where(Blob.sha256 == digest)).scalar_one())
    parts = []
    for seq in range(start // CHUNK_BYTES, (start + length - 1) // CHUNK_BYTES + 1):
        low = max(start - seq * CHUNK_BYTES, 0)
        high = min(start + length - seq * CHUNK_BYTES, CHUNK_BYTES)
        part = session.execute(select(func.substr(BlobChunk.data, low + 1, high - low))
                               .where(BlobChunk.sha256 == digest, BlobChunk.seq == seq)).scalar_one_or_none()
        if part is None:
            break
        parts.append(bytes(part))
    return b"".join(parts)


def hold_blob(session: Session, digest: str) -> bool:
    """Whether the blob is stored; if so it stays (a key-share lock) until this transaction ends."""
    return session.execute(
        select(Blob.sha256).where(Blob.sha256 == digest).with_for_update(read=True, key_share=True)
    ).first() is not None


def tenant_blobs(tenant_id: str) -> Any:
    """The distinct blobs of a tenant's live models and datasets (a shared blob once)."""
    return union(
        select(Model.sha256.label("sha256")).where(Model.tenant_id == tenant_id, Model.deleted_at.is_(None)),
        *(select(column).where(Dataset.tenant_id == tenant_id, Dataset.deleted_at.is_(None))
          for column in DATASET_BLOBS),
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
        *(select(column).where(dataset_live) for column in DATASET_BLOBS),
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
        for column in DATASET_BLOBS:
            session.execute(update(Dataset).where(column == digest, Dataset.deleted_at.is_not(None))
                            .values({column: None}))
        session.execute(delete(BlobChunk).where(BlobChunk.sha256 == digest))
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
    path.parent.mkdir(parents=True, exist_ok=True)
    # Streamed into a temporary file, checked, then renamed: a concurrent reader never sees half a file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
    digest_now = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in read_blob(session, digest):
                digest_now.update(chunk)
                out.write(chunk)
        if digest_now.hexdigest() != digest:
            raise RuntimeError(f"blob {digest} reads back with sha256 {digest_now.hexdigest()}")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path
