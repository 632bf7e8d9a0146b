"""Every `items` list of an evaluation pages with `limit` and `cursor`, and the pages add up to the whole."""

from __future__ import annotations

import csv
import io

import pytest

from shiftscore import Client
from tests.models import DIGITS_INPUT

pytestmark = pytest.mark.integration
# Quarter-pixel steps over ±7 on 8×8 digits: 57 × 57 = 3249 shifts, more than one default page.
GRID = {"dx": [-7, 7], "dy": [-7, 7], "step": 0.25}
NUM_SHIFTS = 57 * 57


@pytest.fixture(scope="module")
def dora(pg_stack):
    return pg_stack.session("dora")


@pytest.fixture(scope="module")
def evaluation(dora, digits_model_file) -> dict:
    model = dora.wait_model(dora.upload_model(digits_model_file, DIGITS_INPUT, name="paged-cnn")["id"])
    assert model["status"] == "ready", model
    submitted = dora.post("/v1/evaluations", json={
        "model_id": model["id"], "dataset_id": "digits", "shifts": GRID, "padding": "reflect",
        "max_samples": 60, "seed": 3})
    assert submitted.status_code == 202, submitted.text
    done = dora.wait_evaluation(submitted.json()["id"], timeout=300)
    assert done["status"] == "succeeded", done
    assert done["summary"]["num_shifts"] == NUM_SHIFTS
    return done


def pages(session, path: str, limit: int) -> list[list[dict]]:
    """Every page of `path` at `limit` rows, following next_cursor to the end."""
    out, params = [], {"limit": limit}
    while True:
        response = session.get(path, params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["items"]) <= limit
        out.append(body["items"])
        if body["next_cursor"] is None:
            return out
        params = {"limit": limit, "cursor": body["next_cursor"]}


@pytest.mark.parametrize("table,limit", [("shifts", 700), ("classes", 3), ("examples", 7)])
def test_small_pages_reassemble_the_whole_list(dora, evaluation, table, limit):
    path = f"/v1/evaluations/{evaluation['id']}/{table}"
    whole = dora.get(path, params={"limit": 10_000}).json()
    assert whole["next_cursor"] is None
    paged = pages(dora, path, limit)
    assert len(paged) == -(-len(whole["items"]) // limit) > 1  # really several pages, none empty
    assert [row for page in paged for row in page] == whole["items"]


def test_the_tables_are_complete(dora, evaluation):
    base = f"/v1/evaluations/{evaluation['id']}"
    shifts = [row for page in pages(dora, base + "/shifts", 1000) for row in page]
    assert len(shifts) == NUM_SHIFTS
    assert [(r["dy"], r["dx"]) for r in shifts] == sorted((r["dy"], r["dx"]) for r in shifts)  # grid order
    table = list(csv.DictReader(io.StringIO(dora.get(base + "/shifts?format=csv").text)))
    assert [(float(r["dx"]), float(r["dy"])) for r in table] == [(r["dx"], r["dy"]) for r in shifts]
    classes = dora.get(base + "/classes").json()
    assert classes["next_cursor"] is None and sum(c["n"] for c in classes["items"]) == 60
    examples = dora.get(base + "/examples", params={"limit": 500}).json()["items"]
    assert 7 < len(examples) <= 100
    assert [e["flips"] for e in examples] == sorted((e["flips"] for e in examples), reverse=True)


def test_limits_cursors_and_csv(dora, evaluation):
    base = f"/v1/evaluations/{evaluation['id']}"
    first = dora.get(base + "/shifts", params={"limit": 1000})
    assert first.status_code == 200 and len(first.json()["items"]) == 1000 and first.json()["next_cursor"]
    default = dora.get(base + "/shifts").json()
    assert default["items"] == first.json()["items"]  # the default page is 1000 rows
    assert dora.get(base + "/examples").json()["items"] == dora.get(base + "/examples?limit=20").json()["items"]
    for query in ("limit=0", "limit=10001", "cursor=garbage", "cursor=e30"):
        response = dora.get(base + "/classes?" + query)
        assert response.status_code == 400, (query, response.text)
        assert response.headers["Content-Type"] == "application/problem+json"
    assert "next_cursor" in dora.get(base + "/classes?cursor=garbage").json()["detail"]
    paged_csv = dora.get(base + "/shifts?format=csv&limit=10")
    assert paged_csv.status_code == 400 and "whole table" in paged_csv.json()["detail"]


def test_the_client_follows_the_cursors(pg_stack, dora, evaluation):
    client = Client(pg_stack.url, dora.headers["Authorization"].removeprefix("Bearer "))
    results = client.results(evaluation["id"], examples=50)
    assert len(results.shifts) == NUM_SHIFTS  # 4 pages of the API's default 1000
    assert results.shifts == [row for page in pages(dora, f"/v1/evaluations/{evaluation['id']}/shifts", 1000)
                              for row in page]
    assert results.classes == dora.get(f"/v1/evaluations/{evaluation['id']}/classes").json()["items"]
    stored = dora.get(f"/v1/evaluations/{evaluation['id']}/examples?limit=100").json()["items"]
    assert results.examples == stored[:50]
