"""Problem details (RFC 9457): every error leaves the API as application/problem+json."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, json, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from api.http.limits import discard_unread_body, too_large_detail

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    """An error a client can act on; routes and services raise it, one handler renders it."""

    status = 400
    title = "Bad request"
    type = "about:blank"

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None,
                 status: int | None = None, title: str | None = None, type: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.status = status or self.status
        self.title = title or self.title
        self.type = type or self.type


class BadRequest(Problem):
    status, title, type = 400, "Bad request", "/problems/bad-request"


class Unauthorized(Problem):
    status, title, type = 401, "Unauthorized", "/problems/unauthorized"


class Forbidden(Problem):
    status, title, type = 403, "Forbidden", "/problems/forbidden"


class NotFound(Problem):
    status, title, type = 404, "Not found", "/problems/not-found"


class Conflict(Problem):
    status, title, type = 409, "Conflict", "/problems/conflict"


class Unprocessable(Problem):
    status, title, type = 422, "Unprocessable request", "/problems/unprocessable"


class TooManyRequests(Problem):
    """A tenant's quota is used up; `retry_after` seconds is when trying again may succeed."""

    status, title, type = 429, "Quota exceeded", "/problems/quota-exceeded"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


def problem_response(status: int, title: str, detail: str, type: str = "about:blank",
                     errors: list[dict[str, Any]] | None = None) -> Response:
    body: dict[str, Any] = {"type": type, "title": title, "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="shiftscore"'
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(Problem)
    def _problem(error: Problem) -> Response:
        response = problem_response(error.status, error.title, error.detail, error.type, error.errors)
        if isinstance(error, TooManyRequests):
            response.headers["Retry-After"] = str(error.retry_after)
        return response

    @app.errorhandler(HTTPException)
    def _http(error: HTTPException) -> Response:
        detail = error.description or error.name
        if error.code == 413:
            detail = too_large_detail()
            discard_unread_body(request.max_content_length or 0)
        response = problem_response(error.code or 500, error.name, detail)
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error")
        return problem_response(500, "Internal server error",
                                "the server hit an unexpected error; it has been logged")
