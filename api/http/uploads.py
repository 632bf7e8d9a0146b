"""Multipart uploads: the file part streams to a temporary file on disk, hashed as it arrives.

Whatever the upload's size, the API holds a parser buffer of it, never the whole file:
werkzeug's multipart parser writes the part through `HashingFile`, which hashes each
block on the way to disk, so the sha256 is known when the body ends without reading it again.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Request, request

from api.http.errors import BadRequest
from api.http.settings import current_settings


class HashingFile:
    """A named temporary file in `directory` that hashes what is written to it (werkzeug's file-part stream)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.file = tempfile.NamedTemporaryFile(dir=directory, prefix="shiftscore-upload-")
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.file.write(data)

    def __getattr__(self, name: str) -> Any:
        # seek, read, close, name…: the temporary file's own.
        return getattr(self.file, name)


class StreamingRequest(Request):
    """Flask's request, with every uploaded file part written through a HashingFile."""

    def _get_file_stream(self, total_content_length: Any, content_type: Any, filename: Any = None,
                         content_length: Any = None) -> HashingFile:
        # On SHIFTSCORE_STORAGE_DIR's disk: a memory-backed /tmp would hold the upload in memory after all.
        return HashingFile(current_settings().uploads_dir)


@dataclass(frozen=True)
class Upload:
    path: Path
    filename: str
    sha256: str
    size: int


def form_fields(file_field: str = "file") -> dict[str, str]:
    """The multipart text fields; a 400 that says how to send the file if it came as text."""
    if file_field in request.form and file_field not in request.files:
        raise BadRequest(
            f"'{file_field}' arrived as a text field, not as a file: with curl write -F {file_field}=@PATH "
            f"(the @ makes curl send the file's content); with requests pass files={{'{file_field}': open(PATH, 'rb')}}",
            errors=[{"field": file_field, "message": "sent as text; send it as a file part"}])
    return request.form.to_dict()


@contextmanager
def uploaded_file(field: str = "file") -> Iterator[Upload]:
    """The uploaded file on disk (removed afterwards), its client-side name, sha256 and size."""
    storage = request.files.get(field)
    if storage is None:
        raise BadRequest(f"send the file as multipart/form-data field '{field}'",
                         errors=[{"field": field, "message": "missing"}])
    stream = storage.stream
    try:
        stream.flush()
        yield Upload(Path(stream.name), storage.filename or field, stream.sha256.hexdigest(), stream.size)
    finally:
        stream.close()

