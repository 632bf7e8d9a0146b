"""Content-addressed blobs: stored once in the database, cached on each worker's disk."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Blob


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put_blob(session: Session, data: bytes) -> str:
    """Store `data` unless identical bytes are already stored; return its sha256."""
    digest = sha256_bytes(data)
    if session.get(Blob, digest) is None:
        session.add(Blob(sha256=digest, size=len(data), data=data))
        session.flush()
    return digest


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
