"""PNG pictures: heatmaps and comparisons of evaluations, and a dataset's images."""

from __future__ import annotations

from flask import Blueprint, Response, request

from api.http.auth import current_tenant
from api.http.openapi import Reply, operation
from api.http.schemas import CompareQuery, CurvesQuery, ExampleViewQuery, HeatmapQuery, SampleQuery
from api.http.schemas import parse
from api.services import pictures
from db.session import session_scope

bp = Blueprint("pictures", __name__, url_prefix="/v1")


def _png(data: bytes) -> Response:
    # Results never change once succeeded, but they are private to the tenant.
    return Response(data, mimetype="image/png", headers={"Cache-Control": "private, max-age=300"})


@bp.get("/evaluations/<evaluation_id>/heatmap.png")
@operation("Accuracy (or agreement, or both side by side) over two axes of the grid (dx and dy by default) as a PNG",
           query=HeatmapQuery, tag="evaluations", responses={
               200: Reply("the heatmap", media_type="image/png"), 409: "not succeeded yet",
               422: "no row has the at_ values asked for"})
def heatmap(evaluation_id: str):
    query = parse(HeatmapQuery, request.args.to_dict(), "query")
    with session_scope() as session:
        return _png(pictures.heatmap(session, current_tenant(), evaluation_id, query))


@bp.get("/evaluations/<evaluation_id>/curves.png")
@operation("Accuracy and agreement against each axis the sweep named (its marginals) as a PNG", query=CurvesQuery,
           tag="evaluations", responses={200: Reply("one panel per axis", media_type="image/png"),
                                         409: "not succeeded yet"})
def curves(evaluation_id: str):
    parse(CurvesQuery, request.args.to_dict(), "query")
    with session_scope() as session:
        return _png(pictures.curves(session, current_tenant(), evaluation_id))


@bp.get("/evaluations/<evaluation_id>/compare.png")
@operation("Two evaluations side by side on one colour scale, and their difference, as a PNG",
           query=CompareQuery, tag="evaluations", responses={
               200: Reply("the comparison", media_type="image/png"), 409: "one of them has not succeeded",
               422: "the two evaluations share no shift"})
def compare(evaluation_id: str):
    query = parse(CompareQuery, request.args.to_dict(), "query")
    with session_scope() as session:
        return _png(pictures.comparison(session, current_tenant(), evaluation_id, query))


@bp.get("/evaluations/<evaluation_id>/examples/<int:index>.png")
@operation("Sample `index` of the evaluation's dataset as its model saw it under the transform (dx, dy, angle, "
           "scale, brightness; an example's worst_transform), as a PNG: the evaluation's padding and fill (and "
           "crop window), before normalization",
           query=ExampleViewQuery, tag="evaluations",
           responses={200: Reply("the transformed image", media_type="image/png"),
                      404: "no such evaluation, or no such sample",
                      422: "the shift does not fit the image, or crop padding with an angle or scale"})
def example_view(evaluation_id: str, index: int):
    query = parse(ExampleViewQuery, request.args.to_dict(), "query")
    with session_scope() as session:
        return _png(pictures.example_view(session, current_tenant(), evaluation_id, index, query))


@bp.get("/datasets/<dataset_id>/samples/<int:index>.png")
@operation("One image of a dataset as a PNG", query=SampleQuery, tag="datasets",
           responses={200: Reply("the image", media_type="image/png"),
                      409: "the dataset is still processing, or invalid: it has no images"})
def sample(dataset_id: str, index: int):
    query = parse(SampleQuery, request.args.to_dict(), "query")
    with session_scope() as session:
        return _png(pictures.sample(session, current_tenant(), dataset_id, index, query))
