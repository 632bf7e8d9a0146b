"""Security headers on every response; the pages (dashboard, docs) also get a Content-Security-Policy."""

from __future__ import annotations

from flask import Flask, Response

# The pages load only their own scripts and styles (no inline code), draw pictures fetched with
# the token as blob: URLs, and talk to this server alone.
PAGE_POLICY = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' blob: data:",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])


def register_security_headers(app: Flask) -> None:
    @app.after_request
    def _secure(response: Response) -> Response:
        # Browsers must not guess a type (a PNG or a problem+json read as HTML); nobody frames us.
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        if response.mimetype == "text/html":
            response.headers.setdefault("Content-Security-Policy", PAGE_POLICY)
        return response
