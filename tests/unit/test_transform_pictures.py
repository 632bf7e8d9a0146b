"""Pictures of sweeps beyond translation: curves of the marginals, heatmaps over any two axes."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from api.http.errors import Unprocessable
from api.services.curves import SERIES, curves_png
from api.services.drawing import heatmap_png
from api.services.pictures import SweepGeometry, project


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


ROWS = [{"dx": dx, "dy": 0, "angle": angle, "scale": 1, "brightness": 0,
         "accuracy": 1 - abs(angle) / 60 - abs(dx) / 10, "agreement": 1 - abs(angle) / 90}
        for angle in (-30, -15, 0, 15, 30) for dx in (-1, 0, 1)]


def test_a_heatmap_pools_the_other_axes_or_keeps_one_value():
    by_angle = project(ROWS, ("angle", "dx"), {})
    assert len(by_angle) == 15  # one row per cell: its own values
    pooled = {r["dx"]: r for r in project(ROWS, ("angle", "dy"), {})}
    assert pooled[30.0]["accuracy"] == np.mean([1 - 0.5 - abs(dx) / 10 for dx in (-1, 0, 1)])
    at = project(ROWS, ("dx", "dy"), {"angle": 15})
    assert sorted(r["dx"] for r in at) == [-1, 0, 1] and all(r["agreement"] == 1 - 15 / 90 for r in at)
    assert project(ROWS, ("dx", "dy"), {"angle": 7}) == []
    picture = decode(heatmap_png(by_angle, ["accuracy"], title="t", axes=("angle", "dx")))
    assert picture.shape[1] > 200 and picture.std() > 20


def test_curves_draw_a_panel_per_axis_in_both_colours():
    marginals = [{"axis": axis, "value": v, "accuracy": 0.9 - abs(v) / 100, "agreement": 0.95, "n": 10}
                 for axis, values in (("angle", (-30, 0, 30)), ("scale", (0.9, 1.1))) for v in values]
    one = decode(curves_png(marginals[:3], title="one axis"))
    two = decode(curves_png(marginals, title="two axes", subtitle="padding zeros"))
    assert two.shape[1] > one.shape[1]
    for color in SERIES.values():
        assert (np.abs(two.astype(int) - np.array(color)).sum(axis=2) == 0).sum() > 50


def test_the_api_draws_transforms_without_torch():
    code = ("import sys, api.services.report, api.routes.pictures, core.views; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_an_example_picture_shows_the_whole_transform():
    image = np.zeros((9, 9), dtype=np.uint8)
    image[1:4, 4] = 255  # a bar above the centre
    geometry = SweepGeometry("zeros", 0.0, (9, 9), (9, 9))
    shown = decode(geometry.png(image, (0, 0, 90, 1, 0), 1))[..., 0]
    # A quarter turn counter-clockwise takes the bar above the centre to its left.
    assert shown[4, 1:4].tolist() == [255, 255, 255] and shown[1:4, 4].tolist() == [0, 0, 0]
    brighter = decode(geometry.png(image, (1, 0, 90, 1, 0.2), 1))[..., 0]
    assert brighter[4, 2:5].tolist() == [255] * 3 and brighter[0, 0] == round(0.2 * 255)
    crop = SweepGeometry("crop", 0.0, (11, 11), (9, 9))
    assert decode(crop.png(np.zeros((11, 11), np.uint8), (1, 0, 0, 1, 0.5), 1)).shape[:2] == (9, 9)
    with pytest.raises(Unprocessable) as refused:
        crop.png(np.zeros((11, 11), np.uint8), (0, 0, 10, 1, 0), 1)
    assert refused.value.errors[0]["field"] == "angle"
