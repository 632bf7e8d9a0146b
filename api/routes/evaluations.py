"""/v1/evaluations"""

from __future__ import annotations

import csv
import io

from flask import Blueprint, Response, jsonify, request

from api.auth import current_tenant
from api.errors import BadRequest
from api.schemas import EvaluationCreate, EvaluationFilter, ExamplesQuery, ShiftsQuery, parse
from api.serializers import evaluation_json
from api.services import evaluations
from db.session import session_scope

bp = Blueprint("evaluations", __name__, url_prefix="/v1/evaluations")


@bp.post("")
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
def index():
    query = parse(EvaluationFilter, request.args.to_dict(), "query")
    with session_scope() as session:
        rows, cursor = evaluations.list_evaluations(session, current_tenant(), query)
        return jsonify(items=[evaluation_json(e) for e in rows], next_cursor=cursor)


@bp.get("/<evaluation_id>")
def show(evaluation_id: str):
    with session_scope() as session:
        return jsonify(evaluation_json(evaluations.get_evaluation(session, current_tenant(), evaluation_id)))


@bp.get("/<evaluation_id>/shifts")
def shifts(evaluation_id: str):
    query = parse(ShiftsQuery, request.args.to_dict(), "query")
    with session_scope() as session:
        rows = evaluations.shift_results(session, current_tenant(), evaluation_id)
    if query.format == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=["dx", "dy", "accuracy", "agreement", "correct", "n"],
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return Response(out.getvalue(), mimetype="text/csv",
                        headers={"Content-Disposition": f"attachment; filename={evaluation_id}-shifts.csv"})
    return jsonify(items=rows)


@bp.get("/<evaluation_id>/classes")
def classes(evaluation_id: str):
    with session_scope() as session:
        return jsonify(items=evaluations.class_results(session, current_tenant(), evaluation_id))


@bp.get("/<evaluation_id>/examples")
def examples(evaluation_id: str):
    query = parse(ExamplesQuery, request.args.to_dict(), "query")
    with session_scope() as session:
        return jsonify(items=evaluations.example_results(session, current_tenant(), evaluation_id, query.limit))


@bp.post("/<evaluation_id>/cancel")
def cancel(evaluation_id: str):
    with session_scope() as session:
        evaluation = evaluations.cancel_evaluation(session, current_tenant(), evaluation_id)
        return jsonify(evaluation_json(evaluation)), 202
