"""Fragile samples: the worst shift is the least confident one, checked against an independent reference;
the numpy view the API serves is the engine's view, pixel for pixel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.reference import reference_crop, reference_view, reference_worst_shifts
from core.grid import build_grid
from worker.engine.plan import SweepPlan
from worker.engine.shifting import make_canvas, to_float
from worker.engine.sweep import run_sweep
from worker.engine.tally import MAX_EXAMPLES, Tally
from core.views import shifted_view


def tiny_model(classes: int = 5, seed: int = 3) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                torch.nn.Flatten(), torch.nn.LazyLinear(classes))
    model(torch.zeros(1, 1, 8, 8))
    return model.eval()


@pytest.mark.parametrize("mode,shifts", [
    ("reflect", {"dx": [-3, 3], "dy": [-2, 2], "step": 1}),
    ("zeros", {"dx": [-1.5, 1.5], "dy": [-1, 1], "step": 0.5}),
])
def test_the_worst_shift_is_where_the_true_label_is_least_probable(mode, shifts):
    rng = np.random.default_rng(11)
    images = rng.integers(0, 256, size=(16, 8, 8, 1), dtype=np.uint8)
    labels = rng.integers(0, 5, size=16)
    model, grid = tiny_model(), build_grid(shifts)
    tally = run_sweep(model, images, labels, np.arange(16), SweepPlan(grid, mode, 0.2, (0.1,), (0.3,), (8, 8)),
                      batch_size=7)
    expected = reference_worst_shifts(model, images, labels, grid, mode, 0.2, 0.1, 0.3)
    assert tally.examples, "the random model must flip some samples"
    assert [e["index"] for e in tally.examples] == sorted((i for i, r in enumerate(expected) if r["flips"]),
                                                           key=lambda i: (-expected[i]["flips"], i))
    for example in tally.examples:
        reference = expected[example["index"]]
        assert tuple(example["worst_shift"]) == grid.shifts[reference["position"]], example
        assert example["worst_prediction"] == reference["prediction"]
        assert example["worst_probability"] == pytest.approx(reference["probability"], rel=1e-5)
        assert (example["flips"], example["clean_prediction"]) == (reference["flips"], reference["clean"])


class PixelClass(torch.nn.Module):
    """One-hot logits of class = pixel (0, 0) read as 0..3: equal confidences at many shifts."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.round(x[:, 0, 0, 0] * 255).long().clamp(0, 3), 4).float()


def test_equal_confidences_go_to_the_first_shift_in_grid_order():
    # Circular shifts of [[1, 2], [3, 0]] bring 1, 2, 3, 0 to (0, 0): label 1 is predicted at (0, 0)
    # only, and the other three shifts give it the same, lowest, probability 1 / (e + 3).
    image = np.array([[[1], [2]], [[3], [0]]], dtype=np.uint8)[None]
    grid = build_grid({"dx": [0, 1], "dy": [0, 1], "step": 1})  # order (0,0) (1,0) (0,1) (1,1)
    tally = run_sweep(PixelClass(), image, np.array([1]), [0], SweepPlan(grid, "circular", 0.0, (0.0,), (1.0,), (2, 2)))
    [example] = tally.examples
    assert example["worst_shift"] == [1, 0] and example["worst_prediction"] == 2
    assert example["worst_probability"] == pytest.approx(1 / (np.e + 3))


def fragile_tally(first_index: int, count: int, grid) -> Tally:
    rng = np.random.default_rng(first_index)
    predictions = rng.integers(0, 3, (count, grid.size))
    predictions[:, 0] = 3  # every sample flips at every other shift
    tally = Tally(num_shifts=grid.size)
    tally.add(grid, predictions, predictions[:, 0], rng.integers(0, 3, count),
              np.arange(first_index, first_index + count), np.zeros((0, 2), dtype=np.int64),
              np.log(rng.uniform(0.01, 1.0, (count, grid.size))))
    return tally


def test_more_than_a_hundred_fragile_samples_survive_checkpoints_and_merges():
    grid = build_grid({"dx": [-2, 2], "dy": [0, 0], "step": 1})
    merged = Tally.from_json(fragile_tally(0, 700, grid).to_json())
    merged.merge(Tally.from_json(fragile_tally(700, 700, grid).to_json()))
    assert len(merged.examples) == MAX_EXAMPLES > 100
    assert [(-e["flips"], e["index"]) for e in merged.examples] == sorted((-e["flips"], e["index"])
                                                                          for e in merged.examples)
    assert all(0 < e["worst_probability"] <= 1 for e in merged.examples)
    assert Tally.from_json(merged.to_json()).examples == merged.examples


@pytest.mark.parametrize("mode", ["zeros", "circular", "reflect", "edge"])
@pytest.mark.parametrize("dx,dy", [(0, 0), (2, -3), (-7, 5), (0.5, -1.25), (-2.75, 0.25)])
def test_the_numpy_view_matches_the_reference_and_the_engine(mode, dx, dy):
    image = np.random.default_rng(5).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    view = shifted_view(image, dx, dy, mode, 0.4, (8, 8))
    floats = image.astype(np.float32).transpose(2, 0, 1) / np.float32(255)
    np.testing.assert_allclose(view.transpose(2, 0, 1), reference_view(floats, dx, dy, mode, 0.4), atol=1e-6)
    margin = (int(np.ceil(abs(dx))), int(np.ceil(abs(dy))))
    engine = make_canvas(to_float(image[None], "cpu"), mode, 0.4, margin, (8, 8)).view(dx, dy)
    assert np.array_equal(view.transpose(2, 0, 1), engine[0].numpy())  # the same float32 bits


@pytest.mark.parametrize("dx,dy", [(0, 0), (3, -2), (-2.5, 1.5)])
def test_the_numpy_view_crops_the_model_window(dx, dy):
    image = np.random.default_rng(6).integers(0, 256, size=(12, 14), dtype=np.uint8)
    view = shifted_view(image, dx, dy, "crop", 0.0, (8, 8))
    assert view.shape == (8, 8, 1)
    floats = image[None].astype(np.float32) / np.float32(255)
    np.testing.assert_allclose(view[:, :, 0], reference_crop(floats, dx, dy, 8, 8)[0], atol=1e-6)
