"""Abusive requests against the real stack (issue 11): each answered 4xx at once, or bounded, never 5xx.

Runs on the shared `pg_stack` (gunicorn API, a Celery worker, PostgreSQL, Redis); the /metrics
defaults run a second API process on the same database.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.integration.test_hostile_uploads import assert_problem, raw_request
from tests.models import DIGITS_INPUT
from tests.stack import METRICS_TOKEN, Stack, free_port

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def bob(pg_stack):
    return pg_stack.session("bounds-bob")


@pytest.fixture(scope="module")
def model_id(bob, digits_model_file) -> str:
    ready = bob.wait_model(bob.upload_model(digits_model_file, DIGITS_INPUT, name="digits")["id"])
    assert ready["status"] == "ready", ready
    return ready["id"]


def sweep(model_id: str, **request) -> dict:
    return {"model_id": model_id, "dataset_id": "digits", "shifts": {"list": [[1, 0]]}, "max_samples": 1, **request}


# ---------- grids are counted before they are built ----------

@pytest.mark.parametrize("shifts", [
    {"dx": [0, 1e7], "dy": [0, 0]},  # main: 7.5 s of an API worker, then 422
    {"dx": [0, 1e12], "dy": [0, 0]},  # main: the API worker ran out of memory
    {"dx": [0, 1e308], "dy": [0, 0], "step": 1e-308},  # main: OverflowError, a 500
], ids=["1e7", "1e12", "1e308-step-1e-308"])
def test_a_huge_grid_is_a_422_within_a_second(bob, model_id, shifts):
    started = time.monotonic()
    response = bob.post("/v1/evaluations", json=sweep(model_id, shifts=shifts))
    elapsed = time.monotonic() - started
    problem = assert_problem(response, 422, "a grid has at most 10000 shifts")
    assert problem["errors"][0]["field"] == "shifts"
    assert elapsed < 1.0, elapsed


# ---------- JSON bodies: their own small limit; lists capped while validated ----------

def test_a_json_body_over_the_limit_is_a_413(bob, model_id):
    # Just over 1 MiB: drained and answered, so an ordinary client reads the 413.
    padding = {"list": [[i % 7, i // 7 % 7] for i in range(10_000)]}
    body = json.dumps(sweep(model_id, shifts=padding, tags=["x" * 60] * 20)) + " " * MiB
    started = time.monotonic()
    response = bob.post("/v1/evaluations", data=body, headers={"Content-Type": "application/json"})
    assert_problem(response, 413, "SHIFTSCORE_MAX_JSON_BYTES")
    assert time.monotonic() - started < 2


def test_a_13_mb_shift_list_is_refused_before_it_is_parsed(pg_stack, bob, model_id):
    # main parsed the whole 12.9 MB list (383 MB of API memory, 4.9 s) before counting it.
    pairs = [[round(i * 1e-4, 4), round(-i * 1e-4, 4)] for i in range(650_000)]
    body = json.dumps(sweep(model_id, shifts={"list": pairs})).encode()
    assert len(body) > 12 * MiB
    token = bob.headers["Authorization"]
    head = (f"POST /v1/evaluations HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    started = time.monotonic()
    response, _ = raw_request(pg_stack.port, head, [body[i:i + 65536] for i in range(0, len(body), 65536)])
    assert response.startswith("HTTP/1.1 413"), response[:300]
    assert "application/problem+json" in response and "SHIFTSCORE_MAX_JSON_BYTES" in response
    assert time.monotonic() - started < 2
    assert bob.get("/v1/datasets").status_code == 200  # the API is still up


def test_a_list_of_10001_pairs_stops_validating_at_the_cap(bob, model_id):
    pairs = [[i % 101 - 50, i // 101 - 50] for i in range(10_001)]  # small enough for the body limit
    problem = assert_problem(bob.post("/v1/evaluations", json=sweep(model_id, shifts={"list": pairs})), 400,
                             "at most 10000 items")
    assert {"field": "shifts.list",
            "message": "List should have at most 10000 items after validation, not 10001"} in problem["errors"]


# ---------- pictures are bounded whatever the grid ----------

def test_heatmap_of_10000_fractional_shifts_is_bounded(bob, model_id):
    # main fell back to a 10,000×10,000 lattice here: a 2.7 GB image and a 10⁸-step loop per request.
    rng = np.random.default_rng(11)
    pairs: set[tuple[float, float]] = set()
    while len(pairs) < 10_000:
        pairs.add((round(float(rng.uniform(-7.5, 7.5)), 4), round(float(rng.uniform(-7.5, 7.5)), 4)))
    created = bob.post("/v1/evaluations", json=sweep(model_id, shifts={"list": sorted(pairs)}, padding="reflect"))
    assert created.status_code == 202, created.text
    done = bob.wait_evaluation(created.json()["id"], timeout=300)
    assert done["status"] == "succeeded", done
    for path in (f"/v1/evaluations/{done['id']}/heatmap.png?metric=both",
                 f"/v1/evaluations/{done['id']}/compare.png?other={done['id']}"):
        started = time.monotonic()
        response = bob.get(path)
        elapsed = time.monotonic() - started
        assert response.status_code == 200 and response.headers["Content-Type"] == "image/png", response.text
        width, height = Image.open(io.BytesIO(response.content)).size
        assert width <= 3000 and height <= 900 and elapsed < 5, (path, width, height, elapsed)


# ---------- ?tag= filters and pages in SQL ----------

def test_tag_filter_pages_with_a_cursor(bob, model_id):
    ids = []
    for i in range(7):
        tags = ["nightly", "nightly"] if i % 2 == 0 else ["adhoc"]  # a repeated tag counts once
        response = bob.post("/v1/evaluations", json=sweep(model_id, tags=tags, seed=i))
        assert response.status_code == 202, response.text
        ids.append((response.json()["id"], tags))
    expected = [eid for eid, tags in reversed(ids) if "nightly" in tags]
    seen, cursor, pages = [], None, 0
    while True:
        params = {"tag": "nightly", "limit": 2, **({"cursor": cursor} if cursor else {})}
        body = bob.get("/v1/evaluations", params=params).json()
        seen += [item["id"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == expected and pages == 2, (seen, expected)  # main: one page, next_cursor null
    assert all("nightly" in bob.get(f"/v1/evaluations/{eid}").json()["tags"] for eid in seen)


# ---------- /metrics spans every tenant: behind its own token ----------

def test_metrics_need_the_metrics_token(pg_stack, bob):
    url = pg_stack.url + "/metrics"
    assert_problem(requests.get(url, timeout=10), 401, "SHIFTSCORE_METRICS_TOKEN")
    assert_problem(requests.get(url, timeout=10, headers={"Authorization": bob.headers["Authorization"]}), 401,
                   "not a tenant's")
    scraped = requests.get(url, timeout=10, headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert scraped.status_code == 200 and "shiftscore_evaluations" in scraped.text


@pytest.mark.parametrize("public, status", [(None, 403), ("true", 200)])
def test_metrics_without_a_token_are_closed_unless_public(pg_stack, tmp_path, public, status):
    env = {k: v for k, v in pg_stack.env.items() if k != "SHIFTSCORE_METRICS_TOKEN"}
    if public:
        env["SHIFTSCORE_METRICS_PUBLIC"] = public
    api = Stack(env=env, port=free_port(), log_dir=tmp_path)
    api.start_api()
    try:
        response = requests.get(api.url + "/metrics", timeout=10)
        assert response.status_code == status, response.text
        if status == 403:
            assert_problem(response, 403, "SHIFTSCORE_METRICS_PUBLIC")
    finally:
        api.stop()


# ---------- security headers ----------

def test_every_response_says_nosniff_and_pages_carry_a_policy(pg_stack, bob):
    for response in (bob.get("/v1/datasets"), bob.get("/v1/evaluations/nope"),
                     bob.get("/v1/datasets/digits/samples/0.png"), requests.get(pg_stack.url + "/healthz", timeout=5)):
        assert response.headers["X-Content-Type-Options"] == "nosniff", response.url
        assert response.headers["X-Frame-Options"] == "DENY", response.url
    for page in ("/dashboard/", "/docs"):
        response = requests.get(pg_stack.url + page, timeout=5)
        policy = response.headers["Content-Security-Policy"]
        assert response.status_code == 200 and "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert "unsafe-inline" not in policy and "blob:" in policy  # the dashboard shows pictures as blob: URLs


# ---------- datasets parsed in the API are bounded ----------

def _api_workers_peak_rss(stack) -> int:
    """The largest peak resident size among the API's gunicorn worker processes."""
    children = Path(f"/proc/{stack.api.pid}/task/{stack.api.pid}/children").read_text().split()
    peaks = []
    for pid in children:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) * 1024)
    return max(peaks)


def test_an_archive_of_solid_4096_pngs_is_refused_at_once(pg_stack, bob, tmp_path):
    # 40 solid 4096² PNGs: 2.3 MB that decode to 1.9 GB, under main's 2 GB bound (main: 6–8 GB).
    buffer = io.BytesIO()
    Image.new("RGB", (4096, 4096), (200, 30, 40)).save(buffer, "PNG")
    path = tmp_path / "solid.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for i in range(40):
            archive.writestr(f"class{i % 2}/{i:03d}.png", buffer.getvalue())
    before = _api_workers_peak_rss(pg_stack)
    started = time.monotonic()
    with path.open("rb") as handle:
        response = bob.post("/v1/datasets", files={"file": handle}, data={"name": "solid"})
    elapsed = time.monotonic() - started
    # The API stores the upload and answers; the worker refuses it from the first image's header.
    assert response.status_code == 202, response.text
    assert elapsed < 2, elapsed
    assert _api_workers_peak_rss(pg_stack) - before < 128 * MiB
    dataset = bob.wait_dataset(response.json()["id"], timeout=30)
    assert dataset["status"] == "invalid" and "decode to more than 1610612736 bytes" in dataset["error"], dataset
    assert bob.get("/v1/datasets").status_code == 200
