"""/v1/models and /v1/architectures"""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from api.http import responses
from api.http.auth import current_tenant
from api.http.openapi import Reply, operation
from api.http.schemas import NameFilter, ModelUpload, json_field, parse
from api.http.serializers import model_json
from api.http.uploads import form_fields, uploaded_file
from api.services import models
from core.architecture_catalog import describe
from db.session import session_scope

bp = Blueprint("models", __name__, url_prefix="/v1")


@bp.post("/models")
@operation("Upload a model as the next version of its name; a worker validates it next (status "
           "'validating'). The same name with the same bytes and input returns the stored version (200)",
           form=ModelUpload, files=["file"],
           responses={201: Reply("the new version", responses.Model),
                      200: Reply("the stored version with these bytes and input", responses.Model),
                                      422: "the input spec or architecture does not fit"})
def create():
    form = form_fields()
    form["input"] = json_field(form.get("input"), "input")
    form["architecture_options"] = json_field(form.get("architecture_options"), "architecture_options", {})
    upload = parse(ModelUpload, form, "form")
    with uploaded_file() as (path, _):
        model, created = models.upload_model(current_tenant(), upload, path)
    return jsonify(model_json(model)), 201 if created else 200, {"Location": f"/v1/models/{model.id}"}


@bp.get("/models")
@operation("List models, newest first; `name` lists that name's versions",
           query=NameFilter, responses={200: Reply("one page of models", responses.ModelPage)})
def index():
    page = parse(NameFilter, request.args.to_dict(), "query")
    with session_scope() as session:
        rows, cursor = models.list_models(session, current_tenant(), page.limit, page.cursor, page.name)
        return jsonify(items=[model_json(m) for m in rows], next_cursor=cursor)


@bp.get("/models/<model_id>")
@operation("Get a model and its validation status, by id or by name (its latest ready version)", responses={200: Reply("the model", responses.Model)})
def show(model_id: str):
    with session_scope() as session:
        return jsonify(model_json(models.get_model(session, current_tenant(), model_id)))


@bp.delete("/models/<model_id>")
@operation("Delete a model (by id, or the version its name means)", responses={204: "deleted"})
def destroy(model_id: str):
    with session_scope() as session:
        models.delete_model(session, current_tenant(), model_id)
    return "", 204


@bp.get("/architectures")
@operation("The built-in architecture registry (for format 'state_dict')",
           responses={200: Reply("the architectures", responses.Architectures)})
def architectures():
    return jsonify(items=describe())
