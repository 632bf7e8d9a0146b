"""Request body limits: a multipart upload may be large, every other body (JSON) stays small; a 413 drains what it can."""

from __future__ import annotations

import time

from flask import Flask, current_app, request

from core.settings import Settings

MULTIPART = "multipart/form-data"


def register_body_limits(app: Flask, settings: Settings) -> None:
    """Give each request that is not a multipart upload the JSON limit instead of the upload limit."""

    @app.before_request
    def _limit_json_bodies() -> None:
        # werkzeug enforces it as the body is read: a declared length over it is refused before
        # a byte is read, a chunked body once it passes the limit.
        if request.mimetype != MULTIPART:
            request.max_content_length = settings.max_json_bytes


def too_large_detail() -> str:
    """What a 413 tells the client: which limit it passed and what to send instead."""
    limit = request.max_content_length
    if request.mimetype != MULTIPART:
        return (f"the request body is larger than the limit of {limit} bytes for JSON bodies "
                "(SHIFTSCORE_MAX_JSON_BYTES); send less per request, e.g. a range grid instead of a long shift list")
    if request.content_length is not None and request.content_length <= (limit or 0):
        return (f"a form field is larger than {current_app.config.get('MAX_FORM_MEMORY_SIZE')} bytes or the "
                "form has too many parts; send large content as the multipart 'file' part")
    return f"the upload is larger than the limit of {limit} bytes (SHIFTSCORE_MAX_UPLOAD_BYTES)"


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
