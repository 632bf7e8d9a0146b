"""/v1/evaluations"""

from __future__ import annotations

import csv
import io

from flask import Blueprint, Response, jsonify, request

from api.http import responses
from api.http.auth import current_tenant
from api.http.errors import BadRequest
from api.http.openapi import Reply, operation
from api.http.schemas import EvaluationCreate, EvaluationFilter, ExamplesQuery, ResultsPage, ShiftsQuery, parse
from api.http.serializers import evaluation_json
from api.services import evaluations, layers, report
from db.session import session_scope

bp = Blueprint("evaluations", __name__, url_prefix="/v1/evaluations")


@bp.post("")
@operation("Submit a sweep: shifts, and angle, scale, brightness beside them (the grid is their product)",
           body=EvaluationCreate,
           headers={"Idempotency-Key": "repeat a submission safely: the same key returns the first evaluation"},
           responses={202: Reply("the queued evaluation", responses.Evaluation, headers={"Location": "its URL"}),
                      404: "no such model or dataset", 409: "the model is still being validated",
                      422: "the request does not fit the model or dataset"})
def create():
    data = request.get_json(silent=True)
    if data is None:
        raise BadRequest("send the evaluation as a JSON object with Content-Type: application/json")
    body = parse(EvaluationCreate, data)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 200:
        raise BadRequest("Idempotency-Key must be 1 to 200 characters")
    evaluation, _ = evaluations.submit_evaluation(current_tenant(), body, key)
    return jsonify(evaluation_json(evaluation)), 202, {"Location": f"/v1/evaluations/{evaluation.id}"}


@bp.get("")
@operation("List evaluations, newest first", query=EvaluationFilter,
           responses={200: Reply("one page of evaluations", responses.EvaluationPage)})
def index():
    query = parse(EvaluationFilter, request.args.to_dict(), "query")
    with session_scope() as session:
        rows, cursor = evaluations.list_evaluations(session, current_tenant(), query)
        warnings = evaluations.warnings_by_id(session, rows)
        return jsonify(items=[evaluation_json(e, warnings[e.id]) for e in rows], next_cursor=cursor)


@bp.get("/<evaluation_id>")
@operation("Get an evaluation: status, progress, summary, and warnings about its figures",
           responses={200: Reply("the evaluation", responses.Evaluation)})
def show(evaluation_id: str):
    with session_scope() as session:
        evaluation = evaluations.get_evaluation(session, current_tenant(), evaluation_id)
        return jsonify(evaluation_json(evaluation, evaluations.warnings_by_id(session, [evaluation])[evaluation.id]))


def _csv_table(table, evaluation_id: str, empty_columns: list[str], name: str) -> Response:
    """Every row of `table(session, tenant, evaluation_id)` as one CSV file, its columns the first row's keys.

    format=csv is the whole table: `limit` and `cursor` page only the JSON.
    """
    if {"limit", "cursor"} & set(request.args):
        raise BadRequest("format=csv is always the whole table in one file; leave out 'limit' and 'cursor' "
                         "(they page the JSON)", errors=[{"field": "format", "message": "csv takes no paging"}])
    with session_scope() as session:
        rows = table(session, current_tenant(), evaluation_id)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else empty_columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return Response(out.getvalue(), mimetype="text/csv",
                    headers={"Content-Disposition": f"attachment; filename={evaluation_id}-{name}.csv"})


def _page(lister, evaluation_id: str, query: ResultsPage):
    """One page of `lister(session, tenant, evaluation_id, limit, cursor)`'s rows as JSON."""
    with session_scope() as session:
        rows, cursor = lister(session, current_tenant(), evaluation_id, query.limit, query.cursor)
    return jsonify(items=rows, next_cursor=cursor)


@bp.get("/<evaluation_id>/shifts")
@operation("Per-shift accuracy and agreement in grid order, a page at a time (or every row with ?format=csv)",
           query=ShiftsQuery,
           responses={200: Reply("one row per grid shift", responses.ShiftRows, also=("text/csv",)), 409: "not succeeded yet"})
def shifts(evaluation_id: str):
    query = parse(ShiftsQuery, request.args.to_dict(), "query")
    if query.format == "csv":
        # Segmentation rows carry their dense metrics after the classification columns.
        columns = ["dx", "dy", "accuracy", "agreement", "correct", "n"]
        return _csv_table(evaluations.shift_results, evaluation_id, columns, "shifts")
    return _page(evaluations.shift_page, evaluation_id, query)


@bp.get("/<evaluation_id>/marginals")
@operation("Accuracy and agreement against each axis the request named (dx, dy, angle, scale, brightness), "
           "a page at a time", query=ResultsPage,
           responses={200: Reply("per axis, its values ascending", responses.MarginalRows), 409: "not succeeded yet"})
def marginals(evaluation_id: str):
    return _page(evaluations.marginal_page, evaluation_id, parse(ResultsPage, request.args.to_dict(), "query"))


@bp.get("/<evaluation_id>/classes")
@operation("Per-class accuracies by label, a page at a time", query=ResultsPage,
           responses={200: Reply("one row per label", responses.ClassRows), 409: "not succeeded yet"})
def classes(evaluation_id: str):
    return _page(evaluations.class_page, evaluation_id, parse(ResultsPage, request.args.to_dict(), "query"))


@bp.get("/<evaluation_id>/examples")
@operation("The samples that break most easily, each at the transform least confident in its label "
           "(worst_transform: its dx, dy and, in sweeps beyond translation, angle, scale and brightness; "
           "the 1,000 most fragile are kept), a page at a time (or all with ?format=csv: worst_transform as "
           "worst_dx, worst_dy, … columns)",
           query=ExamplesQuery,
           responses={200: Reply("most flips first", responses.ExampleRows, also=("text/csv",)),
                      409: "not succeeded yet"})
def examples(evaluation_id: str):
    query = parse(ExamplesQuery, request.args.to_dict(), "query")
    if query.format == "csv":
        return _csv_table(evaluations.example_table, evaluation_id, list(evaluations.EXAMPLE_COLUMNS), "examples")
    return _page(evaluations.example_page, evaluation_id, query)


@bp.get("/<evaluation_id>/layers")
@operation("The layer profile: equivariance and invariance error per layer and shift (docs/equivariance.md)",
           query=ResultsPage,
           responses={200: Reply("layers in forward order, the model output last", responses.LayerProfile),
                      404: "no such evaluation, or it was submitted without 'layers'", 409: "not succeeded yet"})
def layer_profile(evaluation_id: str):
    return _page(layers.layer_profile, evaluation_id, parse(ResultsPage, request.args.to_dict(), "query"))


@bp.get("/<evaluation_id>/report.html")
@operation("One self-contained HTML report (pictures inline, nothing fetched): summary, heatmap, the curves and "
           "marginals of a sweep beyond translation, per class, fragile samples as images under their worst "
           "transform, the sweep and the model's identity",
           responses={200: Reply("the report", media_type="text/html"), 409: "not succeeded yet"})
def html_report(evaluation_id: str):
    with session_scope() as session:
        page = report.evaluation_report(session, current_tenant(), evaluation_id)
    return Response(page, mimetype="text/html", headers={
        "Content-Disposition": f'inline; filename="shiftscore-{evaluation_id}.html"',
        "Cache-Control": "private, max-age=300"})


@bp.post("/<evaluation_id>/cancel")
@operation("Stop a queued or running sweep", responses={
    202: Reply("the evaluation, cancelling", responses.Evaluation), 409: "already finished"})
def cancel(evaluation_id: str):
    with session_scope() as session:
        evaluation = evaluations.cancel_evaluation(session, current_tenant(), evaluation_id)
        return jsonify(evaluation_json(evaluation)), 202
