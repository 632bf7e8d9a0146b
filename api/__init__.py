"""The ShiftScore REST API (Flask). Torch is never imported here."""

from __future__ import annotations

import logging

from flask import Flask, request

from api.http.auth import register_auth
from api.http.errors import register_error_handlers
from api.http.headers import register_security_headers
from api.http.limits import register_body_limits
from api.http.schemas import reject_nul
from api.http.settings import attach_settings
from api.routes import (
    dashboard, datasets, docs, evaluations, health, leaderboard, metrics, models, pictures, tenant,
)
from core import celery_app
from core.settings import Settings, get_settings
from db.session import use_database


def create_app(settings: Settings | None = None) -> Flask:
    """The Flask app, wired to the settings' database and broker."""
    settings = settings or get_settings()
    use_database(settings.database_url)
    celery_app.use_settings(settings)
    app = Flask(__name__)
    attach_settings(app, settings)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    # Form fields beside a file part stay small; the file itself spools to disk.
    app.config["MAX_FORM_MEMORY_SIZE"] = 1024 * 1024
    app.json.sort_keys = False
    register_error_handlers(app)
    register_body_limits(app, settings)
    register_security_headers(app)
    register_auth(app)
    # Path parameters skip `parse`; PostgreSQL text cannot hold NUL, so refuse it here as a 400.
    app.before_request(lambda: reject_nul(request.view_args or {}, "path"))
    for blueprint in (health.bp, datasets.bp, models.bp, evaluations.bp, docs.bp, docs.swagger_ui,
                      pictures.bp, leaderboard.bp, metrics.bp, dashboard.bp, dashboard.root, tenant.bp):
        app.register_blueprint(blueprint)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return app
