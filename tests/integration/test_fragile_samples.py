"""Fragile samples through the real stack: the worst shift (and the worst transform of a rotation
sweep) against a reference computed here, the sample served as the model saw it (pixels against
scipy), and more than 100 samples, paged."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import torch
from PIL import Image

from examples.train_digits_cnn import digits_arrays
from tests.models import DIGITS_INPUT
from tests.reference import reference_transform, reference_view, reference_worst_shifts
from core.grid import build_grid, build_sweep_grid
from worker.engine.plan import sample_indices

pytestmark = pytest.mark.integration
GRID = {"dx": [-3, 3], "dy": [-3, 3], "step": 1}
SAMPLES, SEED, FILL = 400, 4, 0.3


@pytest.fixture(scope="module")
def fern(pg_stack):
    return pg_stack.session("fern")


@pytest.fixture(scope="module")
def evaluation(fern, digits_model_file) -> dict:
    model = fern.wait_model(fern.upload_model(digits_model_file, DIGITS_INPUT, name="fragile-cnn")["id"])
    assert model["status"] == "ready", model
    submitted = fern.post("/v1/evaluations", json={
        "model_id": model["id"], "dataset_id": "digits", "shifts": GRID, "padding": "zeros", "fill": FILL,
        "max_samples": SAMPLES, "seed": SEED})
    assert submitted.status_code == 202, submitted.text
    done = fern.wait_evaluation(submitted.json()["id"], timeout=300)
    assert done["status"] == "succeeded", done
    return done


def every_example(session, evaluation_id: str, limit: int) -> tuple[list[dict], int]:
    """All stored examples, `limit` at a time, and how many pages that took."""
    rows, params, pages = [], {"limit": limit}, 0
    while True:
        body = session.get(f"/v1/evaluations/{evaluation_id}/examples", params=params).json()
        rows += body["items"]
        pages += 1
        if body["next_cursor"] is None:
            return rows, pages
        params = {"limit": limit, "cursor": body["next_cursor"]}


def test_worst_shifts_match_a_reference_and_page_past_100(fern, evaluation, digits_model_file):
    images, labels = digits_arrays()
    indices = sample_indices(len(images), SAMPLES, SEED)
    model, grid = torch.jit.load(str(digits_model_file)).eval(), build_grid(GRID)
    expected = dict(zip(indices.tolist(), reference_worst_shifts(
        model, images[indices][..., None], labels[indices], grid, "zeros", FILL, 0.5, 0.5)))
    fragile = sorted((i for i, r in expected.items() if r["flips"]), key=lambda i: (-expected[i]["flips"], i))
    assert len(fragile) > 100, "the sweep must break more than 100 samples to page past 100"

    rows, pages = every_example(fern, evaluation["id"], 100)
    assert pages > 1 and [r["index"] for r in rows] == fragile
    for row in rows:
        reference = expected[row["index"]]
        assert tuple(row["worst_shift"]) == grid.shifts[reference["position"]], row
        assert row["worst_prediction"] == reference["prediction"], row
        assert row["worst_probability"] == pytest.approx(reference["probability"], rel=1e-4, abs=1e-9), row
        assert (row["flips"], row["clean_prediction"], row["label"]) == (
            reference["flips"], reference["clean"], int(labels[row["index"]]))
    whole = fern.get(f"/v1/evaluations/{evaluation['id']}/examples", params={"limit": 1000}).json()
    assert whole["items"] == rows and whole["next_cursor"] is None


def png_pixels(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)))


@pytest.mark.parametrize("dx,dy", [(0, 0), (3, -2), (-1.5, 0.25)])
def test_the_sample_is_served_as_the_model_saw_it(fern, evaluation, dx, dy):
    images, _ = digits_arrays()
    index = int(sample_indices(len(images), SAMPLES, SEED)[7])
    path = f"/v1/evaluations/{evaluation['id']}/examples/{index}.png"
    got = png_pixels(fern.get(path, params={"dx": dx, "dy": dy}))
    image = images[index][None].astype(np.float32) / np.float32(255)
    expected = np.rint(reference_view(image, dx, dy, "zeros", FILL)[0] * 255).astype(np.uint8)
    assert got.shape == (8, 8) and np.array_equal(got, expected)
    zoomed = png_pixels(fern.get(path, params={"dx": dx, "dy": dy, "zoom": 4}))
    assert np.array_equal(zoomed, np.kron(expected, np.ones((4, 4), dtype=np.uint8)))


def test_the_worst_shift_of_a_listed_sample_draws(fern, evaluation):
    row = fern.get(f"/v1/evaluations/{evaluation['id']}/examples", params={"limit": 1}).json()["items"][0]
    dx, dy = row["worst_shift"]
    shifted = png_pixels(fern.get(f"/v1/evaluations/{evaluation['id']}/examples/{row['index']}.png",
                                  params={"dx": dx, "dy": dy}))
    clean = png_pixels(fern.get(f"/v1/evaluations/{evaluation['id']}/examples/{row['index']}.png"))
    assert (dx, dy) == (0, 0) or not np.array_equal(shifted, clean)


@pytest.mark.parametrize("query,status,needle", [
    ({"dx": 8}, 422, "|dx| < 8"),
    ({"dx": "left"}, 400, "dx"),
    ({"dx": "nan"}, 400, "dx"),
    ({"angle": 400}, 400, "angle"),
    ({"scale": 0}, 400, "scale"),
    ({"brightness": "up"}, 400, "brightness"),
    ({"zoom": 0}, 400, "zoom"),
])
def test_a_shift_that_cannot_be_drawn_says_why(fern, evaluation, query, status, needle):
    response = fern.get(f"/v1/evaluations/{evaluation['id']}/examples/3.png", params=query)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert needle in response.text


def test_unknown_samples_and_other_tenants_get_404(pg_stack, fern, evaluation):
    assert fern.get(f"/v1/evaluations/{evaluation['id']}/examples/1797.png").status_code == 404
    assert pg_stack.session("gus").get(f"/v1/evaluations/{evaluation['id']}/examples/0.png").status_code == 404


ROTATION = {"angle": {"range": [-40, 40], "step": 20}, "brightness": {"list": [0, 0.25]}}
ROTATION_SAMPLES = 200


@pytest.fixture(scope="module")
def rotation(fern, evaluation) -> dict:
    submitted = fern.post("/v1/evaluations", json={
        "model_id": evaluation["model_id"], "dataset_id": "digits", **ROTATION, "padding": "zeros", "fill": FILL,
        "max_samples": ROTATION_SAMPLES, "seed": SEED})
    assert submitted.status_code == 202, submitted.text
    done = fern.wait_evaluation(submitted.json()["id"], timeout=300)
    assert done["status"] == "succeeded", done
    return done


def test_a_rotation_sweeps_worst_transforms_match_a_reference(fern, rotation, digits_model_file):
    images, labels = digits_arrays()
    indices = sample_indices(len(images), ROTATION_SAMPLES, SEED)
    model, grid = torch.jit.load(str(digits_model_file)).eval(), build_sweep_grid(ROTATION)
    expected = dict(zip(indices.tolist(), reference_worst_shifts(
        model, images[indices][..., None], labels[indices], grid, "zeros", FILL, 0.5, 0.5)))
    rows, _ = every_example(fern, rotation["id"], 100)
    assert [r["index"] for r in rows] == sorted((i for i, r in expected.items() if r["flips"]),
                                                key=lambda i: (-expected[i]["flips"], i)) and rows
    for row in rows:
        reference = expected[row["index"]]
        worst = grid.transforms[reference["position"]]
        assert row["worst_transform"] == dict(zip(("dx", "dy", "angle", "scale", "brightness"), worst)), row
        assert row["worst_transform"]["angle"] in (-40, -20, 0, 20, 40) and row["worst_shift"] == [0, 0]
        # The reference's prediction under that very transform is the stored worst prediction.
        assert row["worst_prediction"] == reference["prediction"], row
        assert row["worst_probability"] == pytest.approx(reference["probability"], rel=1e-4, abs=1e-9), row
    assert any(row["worst_transform"]["angle"] != 0 for row in rows)


def test_the_worst_transform_is_drawn_as_the_model_saw_it(fern, rotation):
    images, _ = digits_arrays()
    rows = fern.get(f"/v1/evaluations/{rotation['id']}/examples", params={"limit": 20}).json()["items"]
    turned = [row for row in rows if row["worst_transform"]["angle"] != 0][:5]
    assert turned, "some sample must be least confident at an angle"
    for row in turned:
        worst = row["worst_transform"]
        got = png_pixels(fern.get(f"/v1/evaluations/{rotation['id']}/examples/{row['index']}.png", params=worst))
        image = images[row["index"]][None].astype(np.float32) / np.float32(255)
        transform = tuple(worst[axis] for axis in ("dx", "dy", "angle", "scale", "brightness"))
        expected = np.rint(reference_transform(image, transform, "zeros", FILL)[0] * 255).astype(np.int64)
        # scipy may fuse a multiply-add (docs/transforms.md): at most one level at a rare pixel.
        difference = np.abs(got.astype(np.int64) - expected)
        assert got.shape == (8, 8) and difference.max() <= 1 and (difference > 0).sum() <= 1, (worst, difference)
        only_shift = png_pixels(fern.get(f"/v1/evaluations/{rotation['id']}/examples/{row['index']}.png",
                                         params={"dx": worst["dx"], "dy": worst["dy"]}))
        assert not np.array_equal(got, only_shift)  # the angle is drawn, not only the shift


def test_the_examples_csv_flattens_the_worst_transform(fern, evaluation, rotation):
    columns = ["index", "file", "label", "class_name", "clean_prediction", "worst_prediction", "worst_dx", "worst_dy"]
    for done, axes in ((evaluation, []), (rotation, ["worst_angle", "worst_scale", "worst_brightness"])):
        response = fern.get(f"/v1/evaluations/{done['id']}/examples", params={"format": "csv"})
        assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/csv"), response.text
        table = list(csv.DictReader(io.StringIO(response.text)))
        rows, _ = every_example(fern, done["id"], 1000)
        assert list(table[0]) == columns + axes + ["worst_probability", "flips"] and len(table) == len(rows)
        for line, row in zip(table, rows):
            assert int(line["index"]) == row["index"] and int(line["flips"]) == row["flips"]
            assert {axis: float(line[f"worst_{axis}"]) for axis in row["worst_transform"]} == row["worst_transform"]
            assert float(line["worst_probability"]) == pytest.approx(row["worst_probability"], rel=1e-12)
    paged = fern.get(f"/v1/evaluations/{rotation['id']}/examples", params={"format": "csv", "limit": 5})
    assert paged.status_code == 400 and "whole table" in paged.json()["detail"]
