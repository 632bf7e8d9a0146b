"""The sweep engine against an independent numpy reference and hand-checked cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from core.grid import GridError, build_grid, check_grid_fits
from tests.reference import reference_shift, reference_subpixel, reference_sweep
from worker.engine.metrics import class_rows, shift_rows, summary
from worker.engine.plan import SweepError, SweepPlan, sample_indices
from worker.engine.shifting import make_canvas
from worker.engine.sweep import run_sweep
from worker.engine.tally import Tally

MODES = ["zeros", "circular", "reflect", "edge"]


def tiny_model(channels: int = 1, classes: int = 5, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(channels, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.LazyLinear(classes),
    )
    model(torch.zeros(1, channels, 8, 8))
    return model.eval()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, size=(12, 8, 8, 1), dtype=np.uint8)
    labels = rng.integers(0, 5, size=12)
    return images, labels


# ---------- the engine against the reference ----------

@pytest.mark.parametrize("mode", MODES)
def test_integer_shifts_match_reference_per_mode(data, mode):
    images, labels = data
    model = tiny_model()
    grid = build_grid({"dx": [-3, 3], "dy": [-2, 2], "step": 1})
    plan = SweepPlan(grid, mode, 0.25, (0.1,), (0.3,), (8, 8))
    tally = run_sweep(model, images, labels, np.arange(12), plan, batch_size=5)
    P, clean, ref = reference_sweep(model, images, labels, grid, mode, 0.25, 0.1, 0.3)
    got = summary(tally, grid)
    rows = shift_rows(tally, grid)
    assert [r["accuracy"] for r in rows] == pytest.approx(ref["accuracy"], abs=1e-12)
    assert [r["agreement"] for r in rows] == pytest.approx(ref["agreement"], abs=1e-12)
    for key in ("clean_accuracy", "mean_accuracy", "worst_case_accuracy", "consistency", "flip_rate"):
        assert got[key] == pytest.approx(ref[key], abs=1e-12), key
    assert got["num_shifts"] == 35 and got["num_samples"] == 12


@pytest.mark.parametrize("mode", MODES)
def test_canvas_views_equal_reference_pixel_for_pixel(mode):
    rng = np.random.default_rng(1)
    image = rng.random((2, 5, 7), dtype=np.float32)
    canvas = make_canvas(torch.from_numpy(image[None]), mode, 0.5, (6, 4), (5, 7))
    for dx, dy in itertools.product(range(-6, 7), range(-4, 5)):
        got = canvas.view(dx, dy)[0].numpy()
        np.testing.assert_array_equal(got, reference_shift(image, dx, dy, mode, np.float32(0.5)))


@pytest.mark.parametrize("mode", MODES)
def test_subpixel_views_equal_scipy(mode):
    rng = np.random.default_rng(2)
    image = rng.random((1, 6, 6), dtype=np.float32)
    canvas = make_canvas(torch.from_numpy(image[None]), mode, 0.3, (3, 3), (6, 6))
    for dx, dy in [(0.5, 0.0), (-1.5, 0.5), (2.25, -0.75), (0.0, -2.5)]:
        got = canvas.view(dx, dy)[0].numpy()
        want = reference_subpixel(image, dx, dy, mode, 0.3).astype(np.float32)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_crop_moves_the_window_against_the_shift():
    image = np.arange(10 * 10, dtype=np.float32).reshape(1, 1, 10, 10)
    canvas = make_canvas(torch.from_numpy(image), "crop", 0.0, (0, 0), (6, 6))
    centred = image[0, 0, 2:8, 2:8]
    np.testing.assert_array_equal(canvas.view(0, 0)[0, 0].numpy(), centred)
    # content moves right by 1 and down by 2: the window moves left by 1 and up by 2
    np.testing.assert_array_equal(canvas.view(1, 2)[0, 0].numpy(), image[0, 0, 0:6, 1:7])


def test_subpixel_sweep_matches_reference(data):
    images, labels = data
    model = tiny_model()
    grid = build_grid({"dx": [-1, 1], "dy": [-0.5, 0.5], "step": 0.5})
    plan = SweepPlan(grid, "reflect", 0.0, (0.0,), (1.0,), (8, 8))
    tally = run_sweep(model, images, labels, np.arange(12), plan, batch_size=64)
    _, _, ref = reference_sweep(model, images, labels, grid, "reflect", 0.0, 0.0, 1.0)
    assert summary(tally, grid)["consistency"] == pytest.approx(ref["consistency"], abs=1e-12)
    assert [r["accuracy"] for r in shift_rows(tally, grid)] == pytest.approx(ref["accuracy"])


# ---------- tiny cases checked by hand ----------

class FixedPredictions(torch.nn.Module):
    """Predicts class = the value of pixel (0, 0) of channel 0, read as an integer 0..3."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls = torch.round(x[:, 0, 0, 0] * 255).long().clamp(0, 3)
        return torch.nn.functional.one_hot(cls, 4).float()


def test_hand_checked_metrics_on_a_known_image():
    # One 2×2 image [[1, 2], [3, 0]]; circular shifts put each pixel at (0, 0) once.
    image = np.array([[[1], [2]], [[3], [0]]], dtype=np.uint8)[None]
    labels = np.array([1])
    grid = build_grid({"dx": [0, 1], "dy": [0, 1], "step": 1})
    plan = SweepPlan(grid, "circular", 0.0, (0.0,), (1.0,), (2, 2))
    tally = run_sweep(FixedPredictions(), image, labels, [0], plan)
    # shifts (0,0),(1,0),(0,1),(1,1) bring pixels 1, 2, 3, 0 to (0, 0)
    assert [r["correct"] for r in shift_rows(tally, grid)] == [1, 0, 0, 0]
    got = summary(tally, grid)
    assert got["clean_accuracy"] == 1.0
    assert got["mean_accuracy"] == 0.25
    assert got["worst_case_accuracy"] == 0.0
    assert got["consistency"] == 4 * (1 / 4) ** 2  # four classes once each
    assert got["flip_rate"] == 1.0  # every neighbour pair changes class
    assert tally.examples[0]["flips"] == 3


def test_zeros_fill_reaches_the_model_before_normalization():
    image = np.full((1, 2, 2, 1), 3, dtype=np.uint8)
    grid = build_grid({"list": [[1, 0]]})
    plan = SweepPlan(grid, "zeros", 2 / 255, (0.0,), (1.0,), (2, 2))
    tally = run_sweep(FixedPredictions(), image, np.array([2]), [0], plan)
    # after a shift right by one, pixel (0, 0) holds the fill, 2/255 → class 2
    assert shift_rows(tally, grid)[0]["correct"] == 1
    assert summary(tally, grid)["flip_rate"] is None


def test_circular_invariant_model_is_perfectly_consistent(data):
    images, labels = data
    torch.manual_seed(3)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 3, padding=1, padding_mode="circular"),
        torch.nn.ReLU(),
        torch.nn.Conv2d(6, 6, 3, padding=1, padding_mode="circular"),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(6, 5),
    ).eval()
    grid = build_grid({"dx": [-4, 4], "dy": [-4, 4], "step": 1})
    plan = SweepPlan(grid, "circular", 0.0, (0.5,), (0.25,), (8, 8))
    tally = run_sweep(model, images, labels, np.arange(12), plan, batch_size=32)
    got = summary(tally, grid)
    assert got["consistency"] == 1.0
    assert got["flip_rate"] == 0.0
    accuracies = {r["accuracy"] for r in shift_rows(tally, grid)}
    assert accuracies == {got["clean_accuracy"]}
    assert got["worst_case_accuracy"] == got["clean_accuracy"]


def test_chunks_resumed_from_a_checkpoint_equal_one_run(data):
    images, labels = data
    model = tiny_model()
    grid = build_grid({"dx": [-2, 2], "dy": [-2, 2]})
    plan = SweepPlan(grid, "zeros", 0.0, (0.0,), (1.0,), (8, 8))
    whole = run_sweep(model, images, labels, np.arange(12), plan, batch_size=4)
    checkpoints: list[tuple[dict, int]] = []
    run_sweep(model, images, labels, np.arange(12), plan, batch_size=4,
              on_chunk=lambda t, nxt: checkpoints.append((t.to_json(), nxt)))
    saved, start = checkpoints[0]
    resumed = run_sweep(model, images, labels, np.arange(12), plan, batch_size=4,
                        tally=Tally.from_json(saved), start=start)
    assert resumed.to_json() == whole.to_json()
    assert class_rows(resumed, grid) == class_rows(whole, grid)


def test_non_finite_output_fails_with_a_message(data):
    images, labels = data

    def nan_model(x):
        return torch.full((x.shape[0], 5), float("nan"))

    plan = SweepPlan(build_grid({"list": [[1, 0]]}), "zeros", 0.0, (0.0,), (1.0,), (8, 8))
    with pytest.raises(SweepError, match="not finite"):
        run_sweep(nan_model, images, labels, np.arange(12), plan)


def test_too_few_logits_fails_with_a_message(data):
    images, labels = data
    plan = SweepPlan(build_grid({"list": [[1, 0]]}), "zeros", 0.0, (0.0,), (1.0,), (8, 8))
    with pytest.raises(SweepError, match="2 logits"):
        run_sweep(lambda x: torch.zeros(x.shape[0], 2), images, labels, np.arange(12), plan)


# ---------- grids and samples ----------

def test_grid_order_and_step():
    grid = build_grid({"dx": [-1, 0], "dy": [0, 1], "step": 1})
    assert grid.shifts == ((-1, 0), (0, 0), (-1, 1), (0, 1))
    assert build_grid({"dx": [0, 1], "dy": [0, 0], "step": 0.5}).shifts == ((0, 0), (0.5, 0), (1, 0))
    assert build_grid({"list": [[1, 1], [0, -1], [2, -1]]}).shifts == ((0, -1), (2, -1), (1, 1))


def test_repeated_pair_is_rejected():
    with pytest.raises(GridError, match="repeats"):
        build_grid({"list": [[1, 0], [1, 0]]})


def test_grid_must_fit_the_image():
    with pytest.raises(GridError, match=r"\|dx\| < 8"):
        check_grid_fits(build_grid({"dx": [-8, 0], "dy": [0, 0]}), "zeros", (8, 8), (8, 8))
    with pytest.raises(GridError, match="never resized"):
        check_grid_fits(build_grid({"dx": [0, 0], "dy": [0, 0]}), "zeros", (8, 8), (28, 28))
    with pytest.raises(GridError, match="outside"):
        check_grid_fits(build_grid({"dx": [-3, 3], "dy": [0, 0]}), "crop", (10, 10), (6, 6))
    check_grid_fits(build_grid({"dx": [-2, 2], "dy": [-2, 2]}), "crop", (10, 10), (6, 6))


def test_sample_subset_is_the_spec_formula():
    got = sample_indices(100, 10, 5)
    assert list(got) == sorted(np.random.default_rng(5).permutation(100)[:10])
    assert list(sample_indices(5, None, 0)) == [0, 1, 2, 3, 4]
