"""/v1/leaderboard"""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from api.http.auth import current_tenant
from api.http.openapi import Reply, operation
from api.http.responses import Leaderboard
from api.http.schemas import LeaderboardQuery
from api.http.schemas import parse
from api.services.leaderboard import leaderboard
from db.session import session_scope

bp = Blueprint("leaderboard", __name__, url_prefix="/v1/leaderboard")


@bp.get("")
@operation("Models ranked by their latest succeeded evaluation, one ranking per sweep of the dataset",
           query=LeaderboardQuery,
           responses={200: Reply("the rankings", Leaderboard), 404: "no dataset with that id or name"})
def index():
    query = parse(LeaderboardQuery, request.args.to_dict(), "query")
    with session_scope() as session:
        return jsonify(leaderboard(session, current_tenant(), query))
