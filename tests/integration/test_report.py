"""The evaluation report: one self-contained HTML file from the API and from `shiftscore report`."""

from __future__ import annotations

import base64
import io
import re
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from tests.models import DIGITS_INPUT
from tests.stack import ROOT

pytestmark = pytest.mark.integration


class Links(HTMLParser):
    """Every URL-valued attribute of the page, and the images with their attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.images: list[dict[str, str]] = []

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        self.urls += [value or "" for name, value in attrs if name in ("src", "href", "action", "srcset", "data")]
        if tag == "img":
            self.images.append(values)


@pytest.fixture(scope="module")
def rosa(pg_stack):
    return pg_stack.session("report-rosa")


@pytest.fixture(scope="module")
def done(rosa, digits_model_file) -> dict:
    model = rosa.wait_model(rosa.upload_model(digits_model_file, DIGITS_INPUT, name="report-cnn")["id"])
    evaluation = rosa.post("/v1/evaluations", json={
        "model_id": "report-cnn", "dataset_id": "digits", "shifts": {"dx": [-2, 2], "dy": [-1, 1]},
        "max_samples": 300, "seed": 5, "tags": ["release-7"]}).json()
    finished = rosa.wait_evaluation(evaluation["id"])
    assert finished["status"] == "succeeded", finished
    return {"model": model, "evaluation": finished}


def png_pixels(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


def test_report_is_self_contained_and_holds_the_figures(rosa, done):
    evaluation, model = done["evaluation"], done["model"]
    response = rosa.get(f"/v1/evaluations/{evaluation['id']}/report.html")
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/html")
    page = response.text
    links = Links()
    links.feed(page)
    assert links.urls and all(url.startswith("data:") for url in links.urls), links.urls
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert not re.search(r"https?:|//[a-z]|url\(|@import", text, re.I)  # nothing for a browser to fetch

    heatmap = next(img for img in links.images if img.get("id") == "heatmap")
    both = rosa.get(f"/v1/evaluations/{evaluation['id']}/heatmap.png?metric=both")
    assert np.array_equal(png_pixels(heatmap["src"]), np.asarray(Image.open(io.BytesIO(both.content)).convert("RGB")))
    for value in evaluation["summary"].values():
        if isinstance(value, float):
            assert f"{value:.4f}" in page
    assert model["sha256"] in page and model["id"] in page and "release-7" in page
    assert re.search(r"<th>Version</th><td>1</td>", page)

    classes = rosa.get(f"/v1/evaluations/{evaluation['id']}/classes").json()["items"]
    rows = re.findall(r"<tr><td>(\d+)</td><td class=\"num\">(\d+)</td><td class=\"num\">([\d.]+)</td>", page)
    assert [(int(label), int(n), float(clean)) for label, n, clean in rows] == \
        [(c["label"], c["n"], round(c["clean_accuracy"], 4)) for c in classes]

    examples = rosa.get(f"/v1/evaluations/{evaluation['id']}/examples", params={"limit": 24}).json()["items"]
    pictures = [img for img in links.images if img.get("alt", "").startswith("sample ")]
    # Each sample twice, as the model saw it: unshifted, and at its worst shift.
    assert [img["alt"] for img in pictures] == [
        alt for e in examples for alt in (f"sample {e['index']}", f"sample {e['index']} at "
                                           f"({e['worst_shift'][0]}, {e['worst_shift'][1]})")] and examples
    base = f"/v1/evaluations/{evaluation['id']}/examples/{examples[0]['index']}.png"
    for picture, (dx, dy) in zip(pictures[:2], [(0, 0), examples[0]["worst_shift"]]):
        served = rosa.get(base, params={"dx": dx, "dy": dy, "zoom": 8})
        assert np.array_equal(png_pixels(picture["src"]), np.asarray(Image.open(io.BytesIO(served.content)).convert("RGB")))
    # A translation sweep has no curves beyond its heatmap.
    assert 'id="curves"' not in page and 'id="marginals"' not in page


ROTATION = {"angle": {"range": [-30, 30], "step": 15}, "scale": {"list": [0.9, 1.1]}}


@pytest.fixture(scope="module")
def rotated(rosa, done) -> dict:
    evaluation = rosa.post("/v1/evaluations", json={
        "model_id": "report-cnn", "dataset_id": "digits", **ROTATION, "max_samples": 200, "seed": 5}).json()
    finished = rosa.wait_evaluation(evaluation["id"])
    assert finished["status"] == "succeeded", finished
    return finished


def served_pixels(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def test_a_rotation_report_holds_its_curves_and_worst_transforms(rosa, rotated):
    page = rosa.get(f"/v1/evaluations/{rotated['id']}/report.html").text
    links = Links()
    links.feed(page)
    assert links.urls and all(url.startswith("data:") for url in links.urls), links.urls
    curves = next(img for img in links.images if img.get("id") == "curves")
    assert np.array_equal(png_pixels(curves["src"]), served_pixels(rosa.get(f"/v1/evaluations/{rotated['id']}/curves.png")))
    marginals = rosa.get(f"/v1/evaluations/{rotated['id']}/marginals").json()["items"]
    table = page[page.index('<table id="marginals">'):]
    rows = re.findall(r"<tr><td>(\w+)</td><td class=\"num\">([-\d.]+)</td><td class=\"num\">([\d.]+)</td>"
                      r"<td class=\"num\">([\d.]+)</td><td class=\"num\">(\d+)</td></tr>", table[:table.index("</table>")])
    assert [(axis, float(value), float(accuracy), float(agreement), int(n)) for axis, value, accuracy, agreement, n in rows] \
        == [(m["axis"], m["value"], round(m["accuracy"], 4), round(m["agreement"], 4), m["n"]) for m in marginals]
    assert [m["axis"] for m in marginals] == ["angle"] * 5 + ["scale"] * 2
    assert "<th>Angle</th>" in page and "<th>Scale</th>" in page and "none (dx = dy = 0)" in page
    assert f"{rotated['summary']['num_samples']} samples × {5 * 2} transforms" in page

    examples = rosa.get(f"/v1/evaluations/{rotated['id']}/examples", params={"limit": 24}).json()["items"]
    assert examples, "the rotations must break some samples"
    pictures = {img["alt"]: img["src"] for img in links.images if img.get("alt", "").startswith("sample ")}
    for example in examples:
        worst = example["worst_transform"]
        assert worst["angle"] in (-30, -15, 0, 15, 30) and worst["scale"] in (0.9, 1.1), worst
        words = f"({worst['dx']}, {worst['dy']})" + (f", {worst['angle']}°" if worst["angle"] else "") \
            + f", ×{worst['scale']}"
        assert f"worst {example['worst_prediction']} at {words}" in page
        # The report's picture is the example view under the whole worst transform (its keys are the query).
        served = served_pixels(rosa.get(f"/v1/evaluations/{rotated['id']}/examples/{example['index']}.png",
                                        params={**worst, "zoom": 8}))
        assert np.array_equal(png_pixels(pictures[f"sample {example['index']} at {words}"]), served)
        clean = png_pixels(pictures[f"sample {example['index']}"])
        assert not np.array_equal(served, clean)  # a scale of 0.9 or 1.1 always moves the digit


def test_shiftscore_report_saves_the_same_page(pg_stack, rosa, done, tmp_path):
    env = {**pg_stack.env, "SHIFTSCORE_URL": pg_stack.url,
           "SHIFTSCORE_TOKEN": rosa.headers["Authorization"].removeprefix("Bearer ")}
    out = tmp_path / "report.html"
    run = subprocess.run([sys.executable, "-m", "shiftscore.cli", "report", done["evaluation"]["id"], "-o", str(out)],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(out)
    page = out.read_text()
    api_page = rosa.get(f"/v1/evaluations/{done['evaluation']['id']}/report.html").text
    strip = re.compile(r"report generated \S+")
    assert strip.sub("", page) == strip.sub("", api_page)

    missing = subprocess.run([sys.executable, "-m", "shiftscore.cli", "report", "no-such-evaluation"],
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 3 and "no evaluation with id 'no-such-evaluation'" in missing.stderr


def test_a_report_before_success_is_a_409_problem(rosa, done):
    queued = rosa.post("/v1/evaluations", json={"model_id": "report-cnn", "dataset_id": "digits",
                                               "shifts": {"dx": [-3, 3], "dy": [-3, 3]}}).json()
    response = rosa.get(f"/v1/evaluations/{queued['id']}/report.html")
    rosa.post(f"/v1/evaluations/{queued['id']}/cancel")
    if response.status_code == 200:
        pytest.skip("the sweep finished before the report was asked for")
    assert response.status_code == 409 and response.headers["Content-Type"] == "application/problem+json"
    assert "results exist once it has succeeded" in response.json()["detail"]
