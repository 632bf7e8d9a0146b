"""Multipart uploads: the file part, spooled to a temporary file by werkzeug."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flask import request

from api.http.errors import BadRequest


def form_fields(file_field: str = "file") -> dict[str, str]:
    """The multipart text fields; a 400 that says how to send the file if it came as text."""
    if file_field in request.form and file_field not in request.files:
        raise BadRequest(
            f"'{file_field}' arrived as a text field, not as a file: with curl write -F {file_field}=@PATH "
            f"(the @ makes curl send the file's content); with requests pass files={{'{file_field}': open(PATH, 'rb')}}",
            errors=[{"field": file_field, "message": "sent as text; send it as a file part"}])
    return request.form.to_dict()


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

