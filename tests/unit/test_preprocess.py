"""The declared preprocess of image folders: sizes, rounding of the crop offset, refusals."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.dataset_arrays import DatasetError
from core.preprocess import Preprocess, apply_preprocess, output_size, parse_preprocess, resized_size


def test_the_shorter_side_becomes_r_and_the_longer_floors() -> None:
    assert resized_size(256, 500, 375) == (341, 256)  # 256·500 // 375 = 341.33 → 341
    assert resized_size(256, 375, 500) == (256, 341)
    assert resized_size(10, 7, 7) == (10, 10)


def test_the_crop_offset_rounds_half_to_even() -> None:
    # Each column holds its own index: (217 − 100) / 2 = 58.5 → 58, (219 − 100) / 2 = 59.5 → 60.
    for width, left in ((117 + 100, 58), (119 + 100, 60)):
        pixels = np.tile(np.arange(width, dtype=np.uint16)[None, :] % 256, (4, 1)).astype(np.uint8)
        cropped = np.asarray(apply_preprocess(Image.fromarray(pixels), Preprocess(None, (4, 100)), "x.png"))
        assert cropped[0, 0] == left % 256, (width, cropped[0, 0])


def test_a_crop_larger_than_the_image_names_the_file() -> None:
    with pytest.raises(DatasetError, match="'cat/1.png' is 10×20 pixels"):
        apply_preprocess(Image.new("L", (10, 20)), Preprocess(None, (16, 16)), "cat/1.png")


@pytest.mark.parametrize("bad", [{"resize": 0}, {"resize": True}, {"center_crop": [1]}, {"x": 1}, [], {}, "256"])
def test_malformed_preprocess_is_refused(bad) -> None:
    with pytest.raises(DatasetError, match="preprocess"):
        parse_preprocess(bad)


def test_the_stored_form_and_the_output_size() -> None:
    declared = parse_preprocess({"resize": 256, "center_crop": 224})
    assert declared.as_json() == {"resize": 256, "center_crop": [224, 224]}
    assert output_size(declared, 640, 480) == (224, 224)
    assert output_size(parse_preprocess({"resize": 32}), 64, 48) == (42, 32)
    assert output_size(parse_preprocess({"center_crop": [3, 5]}), 64, 48) == (5, 3)
