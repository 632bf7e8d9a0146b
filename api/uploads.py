"""Multipart uploads: the file part, spooled to a temporary file by werkzeug."""

from __future__ import annotations

import tempfile
import time
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


def discard_unread_body(limit: int, seconds: float = 10.0) -> None:
    """Read and drop what is left of an over-limit body (at most `limit` bytes more), keeping none.

    A server that answers 413 and closes a socket with unread bytes makes the kernel reset
    the connection; a client still sending (requests, curl) then sees the reset, never the
    413. So a body up to twice the limit is drained; a larger one is cut off straight away.
    """
    declared = request.content_length
    if declared is not None and declared > 2 * limit:
        return
    stream = request.environ["wsgi.input"]
    deadline = time.monotonic() + seconds
    left = limit
    while left > 0 and time.monotonic() < deadline:
        block = stream.read(min(left, 1 << 16))
        if not block:
            return
        left -= len(block)
