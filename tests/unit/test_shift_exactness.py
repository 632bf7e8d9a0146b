"""`crop` and sub-pixel shifts through the whole engine, against scipy and index arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.grid import build_grid, check_grid_fits
from tests.reference import reference_crop, reference_metrics, reference_shift, reference_subpixel
from worker.engine.metrics import shift_rows, summary
from worker.engine.plan import SweepPlan
from worker.engine.shifting import make_canvas
from worker.engine.sweep import run_sweep


class Float64Net(torch.nn.Module):
    """A small CNN computed in float64, so batching cannot move an argmax."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv2d(1, 6, 3, padding=1).double()
        self.head = torch.nn.Linear(6 * 4 * 4, classes).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv(x.double())), 2)
        return self.head(x.flatten(1))


def predict_reference(model: torch.nn.Module, views: list[np.ndarray], mean: float, std: float) -> np.ndarray:
    with torch.no_grad():
        batch = torch.from_numpy((np.stack(views) - np.float32(mean)) / np.float32(std))
        return model(batch).argmax(1).numpy()


@pytest.fixture(scope="module")
def big_images():
    rng = np.random.default_rng(11)
    return rng.integers(0, 256, size=(9, 14, 13, 1), dtype=np.uint8), rng.integers(0, 4, size=9)


def test_crop_canvas_equals_reference_for_integer_and_fractional_shifts(big_images):
    images, _ = big_images
    floats = images.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255)
    canvas = make_canvas(torch.from_numpy(floats), "crop", 0.0, (0, 0), (8, 8))
    for dx, dy in [(0, 0), (2, -3), (-2, 3), (0.5, 0), (-1.5, 2.5), (1.25, -0.75)]:
        got = canvas.view(dx, dy).numpy()
        want = np.stack([reference_crop(image, dx, dy, 8, 8) for image in floats])
        if float(dx).is_integer() and float(dy).is_integer():
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_crop_window_is_centred_with_odd_margins():
    image = np.arange(7 * 9, dtype=np.float32).reshape(1, 1, 7, 9)
    canvas = make_canvas(torch.from_numpy(image), "crop", 0.0, (0, 0), (4, 4))
    # top-left corner ((7 - 4) // 2, (9 - 4) // 2) = (1, 2)
    np.testing.assert_array_equal(canvas.view(0, 0)[0, 0].numpy(), image[0, 0, 1:5, 2:6])


@pytest.mark.parametrize("spec", [
    {"dx": [-2, 2], "dy": [-3, 2], "step": 1},
    {"dx": [-1.5, 1.5], "dy": [-1, 1], "step": 0.5},
    {"list": [[0.25, -1.75], [2, 3], [-0.5, 0]]},
])
def test_crop_sweep_equals_reference(big_images, spec):
    images, labels = big_images
    grid = build_grid(spec)
    check_grid_fits(grid, "crop", (14, 13), (8, 8))
    model = Float64Net()
    plan = SweepPlan(grid, "crop", 0.0, (0.2,), (0.4,), (8, 8))
    tally = run_sweep(model, images, labels, np.arange(len(labels)), plan, batch_size=7)
    floats = images.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255)
    P = np.stack([
        predict_reference(model, [reference_crop(im, dx, dy, 8, 8) for im in floats], 0.2, 0.4)
        for dx, dy in grid.shifts
    ], axis=1)
    clean = predict_reference(model, [reference_crop(im, 0, 0, 8, 8) for im in floats], 0.2, 0.4)
    ref = reference_metrics(P, clean, labels, list(grid.shifts), grid.step)
    got = summary(tally, grid)
    for key in ("clean_accuracy", "mean_accuracy", "worst_case_accuracy", "consistency", "flip_rate"):
        assert got[key] == pytest.approx(ref[key], abs=1e-12) if ref[key] is not None else got[key] is None
    assert [r["agreement"] for r in shift_rows(tally, grid)] == pytest.approx(ref["agreement"], abs=1e-12)


@pytest.mark.parametrize("mode", ["zeros", "circular", "reflect", "edge"])
def test_half_step_sweep_equals_scipy_per_mode(mode):
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, size=(10, 8, 8, 1), dtype=np.uint8)
    labels = rng.integers(0, 4, size=10)
    grid = build_grid({"dx": [-1.5, 1.5], "dy": [-1, 0.5], "step": 0.5})
    model = Float64Net()
    plan = SweepPlan(grid, mode, 0.3, (0.1,), (0.5,), (8, 8))
    tally = run_sweep(model, images, labels, np.arange(10), plan, batch_size=16)
    floats = images.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255)

    def shifted(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
        if float(dx).is_integer() and float(dy).is_integer():
            return reference_shift(image, int(dx), int(dy), mode, np.float32(0.3))
        return reference_subpixel(image, dx, dy, mode, 0.3).astype(np.float32)

    P = np.stack([predict_reference(model, [shifted(im, dx, dy) for im in floats], 0.1, 0.5)
                  for dx, dy in grid.shifts], axis=1)
    clean = predict_reference(model, list(floats), 0.1, 0.5)
    ref = reference_metrics(P, clean, labels, list(grid.shifts), grid.step)
    got = summary(tally, grid)
    assert got["num_shifts"] == 7 * 4
    for key in ("clean_accuracy", "mean_accuracy", "worst_case_accuracy", "consistency", "flip_rate"):
        assert got[key] == pytest.approx(ref[key], abs=1e-12), key
    assert [r["accuracy"] for r in shift_rows(tally, grid)] == pytest.approx(ref["accuracy"], abs=1e-12)
