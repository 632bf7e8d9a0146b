"""/v1/datasets"""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from api.http import responses
from api.http.auth import current_tenant
from api.http.openapi import Reply, operation
from api.http.schemas import DatasetUpload, NameFilter, parse
from api.http.serializers import dataset_json
from api.http.uploads import form_fields, uploaded_file
from api.services import datasets
from db.session import session_scope

bp = Blueprint("datasets", __name__, url_prefix="/v1/datasets")


@bp.post("")
@operation("Upload a dataset (NPZ, or a .zip / .tar.gz image folder); the same name with the same bytes "
           "returns the stored dataset (200)", form=DatasetUpload, files=["file"], responses={
    201: Reply("the stored dataset", responses.Dataset),
    200: Reply("the dataset already stored under this name with these bytes", responses.Dataset),
    422: "the file is not a usable dataset, or the name is a built-in's"})
def create():
    form = parse(DatasetUpload, form_fields(), "form")
    with uploaded_file() as (path, filename), session_scope() as session:
        dataset, created = datasets.create_dataset(session, current_tenant(), form.name, path, filename)
        body = dataset_json(dataset)
    return jsonify(body), 201 if created else 200, {"Location": f"/v1/datasets/{body['id']}"}


@bp.get("")
@operation("List datasets, the built-ins included; `name` keeps that name's", query=NameFilter,
           responses={200: Reply("one page of datasets", responses.DatasetPage)})
def index():
    page = parse(NameFilter, request.args.to_dict(), "query")
    with session_scope() as session:
        rows, cursor = datasets.list_datasets(session, current_tenant(), page.limit, page.cursor, page.name)
        return jsonify(items=[dataset_json(d) for d in rows], next_cursor=cursor)


@bp.get("/<dataset_id>")
@operation("Get a dataset by id or name", responses={200: Reply("the dataset", responses.Dataset)})
def show(dataset_id: str):
    with session_scope() as session:
        return jsonify(dataset_json(datasets.get_dataset(session, current_tenant(), dataset_id)))


@bp.delete("/<dataset_id>")
@operation("Delete a dataset", responses={204: "deleted", 422: "built-in datasets cannot be deleted"})
def destroy(dataset_id: str):
    with session_scope() as session:
        datasets.delete_dataset(session, current_tenant(), dataset_id)
    return "", 204
