"""The dashboard: HTML shells that fetch the tenant's data from /v1 with the token kept in the browser.

The pages themselves carry no tenant data, so they need no login; every number and picture on
them comes from a /v1 request that sends the token the user typed (kept in sessionStorage).
"""

from __future__ import annotations

from flask import Blueprint, redirect, render_template

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")
root = Blueprint("root", __name__)


@root.get("/")
def home():
    """A person who opens the service's URL lands on the dashboard."""
    return redirect("/dashboard/", code=302)


@bp.get("/")
def evaluations():
    return render_template("dashboard/evaluations.html", page="evaluations")


@bp.get("/evaluations/<evaluation_id>")
def evaluation(evaluation_id: str):
    return render_template("dashboard/evaluation.html", page="evaluation", evaluation_id=evaluation_id)


@bp.get("/leaderboard")
def leaderboard():
    return render_template("dashboard/leaderboard.html", page="leaderboard")

