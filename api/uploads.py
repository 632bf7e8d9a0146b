"""Multipart uploads: the file part, spooled to a temporary file by werkzeug."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flask import request

from api.errors import BadRequest


@contextmanager
def uploaded_file(field: str = "file") -> Iterator[tuple[Path, str]]:
    """The uploaded file as a path on disk (removed afterwards) and its client-side name."""
    storage = request.files.get(field)
    if storage is None:
        raise BadRequest(f"send the file as multipart/form-data field '{field}'",
                         errors=[{"field": field, "message": "missing"}])
    with tempfile.NamedTemporaryFile(prefix="shiftscore-upload-") as handle:
        storage.save(handle)
        handle.flush()
        yield Path(handle.name), storage.filename or field
