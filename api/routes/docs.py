"""The OpenAPI document and its browsable docs, served from this package (no CDN)."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, current_app, jsonify, send_from_directory

from api.openapi import Reply, build_openapi, operation

STATIC = Path(__file__).resolve().parents[1] / "static"
bp = Blueprint("docs", __name__, static_folder=str(STATIC), static_url_path="/docs/assets")


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
