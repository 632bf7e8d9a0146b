"""The OpenAPI document, Swagger UI on it and the metric definitions, all served from here (no CDN).

Swagger UI's files come from the `swagger-ui-py` package (its `static/` folder, Swagger UI 5.x);
/docs loads its bundle and stylesheet; its LICENSE is at /docs/swagger-ui/LICENSE.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from flask import Blueprint, current_app, jsonify, send_from_directory

from api.http.openapi import Reply, build_openapi, operation

STATIC = Path(__file__).resolve().parents[1] / "static"
# Found without importing swagger_ui, whose package imports its web-framework handlers.
SWAGGER_UI = Path(importlib.util.find_spec("swagger_ui").submodule_search_locations[0]) / "static"
bp = Blueprint("docs", __name__, static_folder=str(STATIC), static_url_path="/docs/assets")
# Static files, as Flask serves them: like /docs/assets, not operations of the API.
swagger_ui = Blueprint("swagger_ui", __name__, static_folder=str(SWAGGER_UI), static_url_path="/docs/swagger-ui")


@bp.get("/openapi.json")
@operation("This API's OpenAPI 3.1 document", tag="docs", responses={200: Reply("the document")})
def openapi_document():
    # Built once, after every blueprint is registered.
    document = current_app.extensions.get("shiftscore.openapi")
    if document is None:
        document = current_app.extensions["shiftscore.openapi"] = build_openapi(current_app)
    return jsonify(document)


@bp.get("/docs")
@operation("Browsable API docs", tag="docs", responses={200: Reply("an HTML page", media_type="text/html")})
def docs_page():
    return send_from_directory(STATIC, "docs.html", mimetype="text/html", max_age=0)


@bp.get("/docs/metrics")
@operation("What each metric means: the shift, padding, grid, samples, formulas and sources (Markdown)",
           tag="docs", responses={200: Reply("docs/metrics.md as plain text", media_type="text/plain")})
def metrics_page():
    # Plain text: Markdown reads as it is, and a browser shows text/plain instead of downloading it.
    return send_from_directory(STATIC, "metrics.md", mimetype="text/plain", max_age=0)
