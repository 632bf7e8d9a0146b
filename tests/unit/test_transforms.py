"""Rotation, scale and brightness (SPEC §1b) through the engine, against scipy written out in the tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from tests.reference import SCIPY_MODES, reference_transform, reference_transform_metrics
from worker.architectures import build
from worker.engine.driver import ChunkViews
from core.grid import GridError, build_sweep_grid, check_grid_fits, transform_of
from core.views import transformed_view
from core.marginals import marginal_rows
from worker.engine.metrics import shift_rows, summary
from worker.engine.plan import SweepPlan
from worker.engine.shifting import make_canvas, normalized_canvas
from worker.engine.sweep import run_sweep
from worker.engine.transforms import Sampler, apply_map, sampling_map, with_fill_slot

MODES = list(SCIPY_MODES)
CPU = torch.device("cpu")


def floats(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.float32) / np.float32(255)


def views(images: np.ndarray, padding: str, fill: float, margin=(8, 8)) -> ChunkViews:
    """One chunk of B×C×H×W floats as the driver lays it, mean 0 and std 1."""
    raw = make_canvas(torch.from_numpy(images), padding, fill, margin, images.shape[2:])
    zero, one = torch.zeros(images.shape[1], 1, 1), torch.ones(images.shape[1], 1, 1)
    sampler = Sampler(images.shape[2:], padding, CPU)
    return ChunkViews(0, np.arange(len(images)), raw, normalized_canvas(raw, zero, one), zero, one, sampler, fill)


def engine(images: np.ndarray, transform, padding: str, fill: float) -> np.ndarray:
    return views(images, padding, fill).view(*transform).numpy()


def reference(images: np.ndarray, transform, padding: str, fill: float) -> np.ndarray:
    return np.stack([reference_transform(image, transform, padding, fill) for image in images])


def assert_scipy_equal(got: np.ndarray, want: np.ndarray, message: str = "") -> None:
    """Equal, but for at most one float32 step at under 1% of pixels.

    scipy's wheel may fuse the multiply-add of its coordinate arithmetic (FMA), so a
    coordinate that is exactly k + 0.5 in the unfused formula can be one float64 step
    away in scipy; that moves a value by at most one float32 step (docs/decisions.md).
    """
    steps = np.abs(got.view(np.int32).astype(np.int64) - want.view(np.int32).astype(np.int64))
    assert steps.max() <= 1, message
    assert (steps > 0).mean() < 0.01, message


RANDOM = [tuple(v) for v in np.random.default_rng(5).uniform([-3, -3, -360, 0.2, 0], [3, 3, 360, 3, 0], (12, 5))]


@pytest.mark.parametrize("padding", MODES)
@pytest.mark.parametrize("hw", [(9, 9), (8, 13), (28, 28)])
def test_rotations_and_scales_equal_scipy_affine_transform_bit_for_bit(padding, hw):
    images = floats(1, (3, 2, *hw))
    grid = [(0, 0, 30, 1, 0), (0, 0, -45, 1, 0), (0, 0, 90, 1, 0), (0, 0, 180, 1, 0), (0, 0, 360, 1, 0),
            (0, 0, 0, 1.5, 0), (0, 0, 0, 0.5, 0), (0, 0, 0, 10, 0), (1.5, -2, 17, 0.8, 0), *RANDOM]
    for transform in grid:
        assert_scipy_equal(engine(images, transform, padding, 0.3), reference(images, transform, padding, 0.3),
                           str(transform))


@pytest.mark.parametrize("padding", MODES)
def test_a_pure_rotation_is_scipy_rotate(padding):
    image = floats(2, (1, 1, 11, 11))
    for angle in (10, -30, 45, 135, 270):
        want = ndimage.rotate(image[0, 0].astype(np.float64), angle, reshape=False, order=1,
                              mode=SCIPY_MODES[padding], cval=0.0).astype(np.float32)
        assert_scipy_equal(engine(image, (0, 0, angle, 1, 0), padding, 0.0)[0, 0], want)


@pytest.mark.parametrize("padding", MODES)
def test_a_quarter_turn_of_a_square_image_is_transpose_and_flip(padding):
    image = floats(3, (2, 3, 6, 6))
    # Counter-clockwise as displayed: out[r, c] = in[c, W-1-r], numpy's rot90.
    np.testing.assert_array_equal(engine(image, (0, 0, 90, 1, 0), padding, 0.5), np.rot90(image, 1, axes=(2, 3)))
    np.testing.assert_array_equal(engine(image, (0, 0, -90, 1, 0), padding, 0.5), np.rot90(image, -1, axes=(2, 3)))
    np.testing.assert_array_equal(engine(image, (0, 0, 180, 1, 0), padding, 0.5), image[:, :, ::-1, ::-1])


def test_a_quarter_turn_by_hand():
    image = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3) / np.float32(255)
    expected = np.array([[2, 5, 8], [1, 4, 7], [0, 3, 6]], dtype=np.float32) / np.float32(255)
    np.testing.assert_array_equal(engine(image, (0, 0, 90, 1, 0), "circular", 0.0)[0, 0], expected)


@pytest.mark.parametrize("padding", MODES)
def test_the_sampling_map_at_angle_zero_is_the_shift_bit_for_bit(padding):
    images = floats(4, (2, 2, 8, 9))
    chunk = views(images, padding, 0.25)
    for dx, dy in [(0, 0), (2, -1), (-3, 3), (0.5, 0), (1.25, -2.5), (-0.75, 0.5)]:
        forced = apply_map(with_fill_slot(torch.from_numpy(images), 0.25),
                           sampling_map(0.0, 1.0, dx, dy, (8, 9), padding, CPU), images.shape)
        np.testing.assert_array_equal(forced.numpy(), chunk.raw.view(dx, dy).numpy())
        # and the engine's own route for (dx, dy, 0, 1, 0) is §1's shift
        np.testing.assert_array_equal(chunk.view(dx, dy, 0.0, 1.0, 0.0).numpy(), chunk.raw.view(dx, dy).numpy())


@pytest.mark.parametrize("padding", MODES)
def test_brightness_clamps_after_the_geometry(padding):
    images = floats(6, (2, 1, 7, 7))
    for transform in [(0, 0, 0, 1, 0.4), (0, 0, 0, 1, -1), (1, -2, 0, 1, 0.25), (0.5, 0, 0, 1, -0.3),
                      (0, 0, 30, 1.2, 0.2), (2, 1, -60, 0.7, -0.6)]:
        got = engine(images, transform, padding, 0.9)
        assert_scipy_equal(got, reference(images, transform, padding, 0.9), str(transform))
        assert got.min() >= 0 and got.max() <= 1


def test_the_fill_is_brightened_too():
    image = np.zeros((1, 1, 5, 5), dtype=np.float32)
    got = engine(image, (4, 0, 0, 1, 0.5), "zeros", 0.25)[0, 0]
    np.testing.assert_array_equal(got[:, :4], np.float32(0.25) + np.float32(0.5))
    np.testing.assert_array_equal(got[:, 4], np.float32(0.5))


class Float64Net(torch.nn.Module):
    """A small CNN in float64, so batching cannot move an argmax."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.conv = torch.nn.Conv2d(1, 6, 3, padding=1).double()
        self.head = torch.nn.Linear(6 * 4 * 4, 4).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv(x.double())), 2)
        return self.head(x.flatten(1))


JOINT = [
    {"shifts": {"dx": [-1, 1], "dy": [-1, 0], "step": 1}, "angle": {"range": [-30, 30], "step": 15}},
    {"angle": {"list": [90, -45, 0]}, "scale": {"range": [0.8, 1.2], "step": 0.2}, "brightness": {"list": [-0.2, 0.3]}},
    {"shifts": {"list": [[0.5, 0], [-1, 2]]}, "scale": {"list": [1.1]}, "brightness": {"range": [-0.4, 0.4], "step": 0.4}},
]


@pytest.mark.parametrize("padding", MODES)
@pytest.mark.parametrize("request_", JOINT)
def test_joint_sweeps_equal_the_reference(padding, request_):
    rng = np.random.default_rng(8)
    images, labels = rng.integers(0, 256, (11, 8, 8, 1), dtype=np.uint8), rng.integers(0, 4, 11)
    grid = build_sweep_grid(request_)
    model = Float64Net()
    plan = SweepPlan(grid, padding, 0.1, (0.2,), (0.4,), (8, 8))
    tally = run_sweep(model, images, labels, np.arange(11), plan, batch_size=10)
    pixels = images.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255)

    def predict(transform) -> np.ndarray:
        batch = reference(pixels, transform, padding, 0.1)
        with torch.no_grad():
            return model(torch.from_numpy((batch - np.float32(0.2)) / np.float32(0.4))).argmax(1).numpy()

    P = np.stack([predict(t) for t in grid.transforms], axis=1)
    clean = predict((0, 0, 0, 1, 0))
    steps = {position: axis.step for axis in grid.axes if axis.step is not None
             for position in [{"angle": 2, "scale": 3, "brightness": 4}[axis.name]]}
    if grid.step is not None:
        steps.update({0: grid.step, 1: grid.step})
    want = reference_transform_metrics(P, clean, labels, grid.transforms, steps)
    got = summary(tally, grid)
    for name in ("clean_accuracy", "mean_accuracy", "worst_case_accuracy", "consistency", "flip_rate"):
        assert got[name] == pytest.approx(want[name], abs=1e-12), name
    rows = shift_rows(tally, grid)
    assert [r["accuracy"] for r in rows] == pytest.approx(want["accuracy"])
    assert [r["agreement"] for r in rows] == pytest.approx(want["agreement"])
    # §1b's row order: brightness, scale, angle, dy, dx (the last fastest).
    keys = [(r["brightness"], r["scale"], r["angle"], r["dy"], r["dx"]) for r in rows]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    for m in marginal_rows(rows, grid.named_axes):
        position = {"dx": 0, "dy": 1, "angle": 2, "scale": 3, "brightness": 4}[m["axis"]]
        columns = [j for j, t in enumerate(grid.transforms) if t[position] == m["value"]]
        assert m["n"] == 11 * len(columns)
        assert m["accuracy"] == pytest.approx(float(np.mean(P[:, columns] == labels[:, None])))
        assert m["agreement"] == pytest.approx(float(np.mean(P[:, columns] == clean[:, None])))


def test_the_grid_is_the_product_in_spec_order():
    grid = build_sweep_grid({"shifts": {"dx": [0, 1], "dy": [0, 0], "step": 1},
                             "angle": {"list": [10, -10]}, "brightness": {"range": [0, 0.2], "step": 0.1}})
    assert grid.size == 2 * 2 * 3 == len(grid.transforms)
    assert grid.transforms[:3] == ((0.0, 0.0, -10.0, 1.0, 0.0), (1.0, 0.0, -10.0, 1.0, 0.0), (0.0, 0.0, 10.0, 1.0, 0.0))
    assert grid.transforms[-1] == (1.0, 0.0, 10.0, 1.0, 0.2)
    assert grid.named_axes == ("dx", "dy", "angle", "brightness")
    # angle is a list: no angle pairs; dx and brightness are ranges.
    assert len(grid.neighbour_pairs()) == 2 * 3 * 1 + 2 * 2 * 2
    only = build_sweep_grid({"angle": {"range": [-30, 30], "step": 10}})
    assert only.shifts == ((0.0, 0.0),) and only.named_axes == ("angle",) and only.size == 7


@pytest.mark.parametrize("request_, message", [
    ({}, "name at least one axis"),
    ({"scale": {"list": [0]}}, "scale must be positive"),
    ({"scale": {"range": [-1, 2], "step": 1}}, "scale must be positive"),
    ({"angle": {"list": [5, 10, 5]}}, "repeats the value 5"),
    ({"brightness": {"list": [0.1, 0.1]}}, "repeats the value 0.1"),
    ({"angle": {"range": [-400, 0], "step": 10}}, "outside"),
    ({"brightness": {"range": [0, 2], "step": 1}}, "outside"),
    ({"angle": {"range": [0, 10]}}, "needs both range and step"),
    ({"shifts": {"dx": [-5, 5], "dy": [-5, 5], "step": 1}, "angle": {"range": [-90, 90], "step": 1}},
     "121 × 181 = 21901 transforms; at most 10000"),
    ({"angle": {"range": [-360, 360], "step": 0.01}}, "more than 10000"),
])
def test_bad_axes_are_refused_with_the_reason(request_, message):
    with pytest.raises(GridError, match=message.replace("(", r"\(")):
        build_sweep_grid(request_)


def test_crop_takes_no_angle_or_scale():
    for axis, spec in (("angle", {"list": [10]}), ("scale", {"list": [1.5]})):
        grid = build_sweep_grid({axis: spec})
        with pytest.raises(GridError, match="crop' takes translations and brightness only"):
            check_grid_fits(grid, "crop", (12, 12), (8, 8))
    check_grid_fits(build_sweep_grid({"brightness": {"list": [0.5]}}), "crop", (12, 12), (8, 8))


def _c4_symmetric(net: torch.nn.Module) -> torch.nn.Module:
    """Replace every kernel by the mean of its four quarter turns."""
    with torch.no_grad():
        for conv in (m for m in net.modules() if isinstance(m, torch.nn.Conv2d)):
            w = conv.weight
            conv.weight.copy_(sum(torch.rot90(w, k, dims=(2, 3)) for k in range(4)) / 4)
    return net


def test_the_circular_invariant_model_and_quarter_turns():
    """Invariant to circular shifts, not to quarter turns, unless its kernels are themselves C4-symmetric.

    A quarter turn of the input is a quarter turn of every feature map computed with
    kernels turned back a quarter: the same network only when each kernel equals its turns.
    """
    torch.manual_seed(0)
    net = build("circular_invariant", {"num_classes": 10, "depth": 3}, 1).double().eval()
    images = floats(9, (16, 1, 12, 12))
    chunk = views(images, "circular", 0.0)

    def logits(model, batch):
        with torch.no_grad():
            return model(batch.double())

    clean = logits(net, chunk.view(0, 0))
    for shift in [(3, -2, 0, 1, 0), (-5, 7, 0, 1, 0)]:
        torch.testing.assert_close(logits(net, chunk.view(*shift)), clean, rtol=0, atol=1e-12)
    turned = [logits(net, chunk.view(0, 0, angle, 1, 0)) for angle in (90, 180, 270)]
    assert all((t - clean).abs().max() > 1e-5 for t in turned)
    symmetric = _c4_symmetric(net)
    clean = logits(symmetric, chunk.view(0, 0))
    for angle in (90, 180, 270, -90):
        torch.testing.assert_close(logits(symmetric, chunk.view(0, 0, angle, 1, 0)), clean, rtol=0, atol=1e-12)
    # Not for other angles: interpolation changes the pixels themselves.
    assert (logits(symmetric, chunk.view(0, 0, 45, 1, 0)) - clean).abs().max() > 1e-6


def test_images_per_sample_counts_every_transform_and_the_identity():
    with_identity = build_sweep_grid({"angle": {"list": [-10, 0, 10]}, "brightness": {"list": [0, 0.2]}})
    assert with_identity.images_per_sample == 6 == len(with_identity.evaluated_transforms)
    without = build_sweep_grid({"shifts": {"list": [[1, 0]]}, "scale": {"list": [0.9, 1.1]}})
    assert without.images_per_sample == 3 and without.evaluated_transforms[-1] == (0.0, 0.0, 0.0, 1.0, 0.0)


def test_the_worst_transform_is_the_least_probable_over_every_axis():
    rng = np.random.default_rng(5)
    images, labels = rng.integers(0, 256, (9, 8, 8, 1), dtype=np.uint8), rng.integers(0, 4, 9)
    grid = build_sweep_grid(JOINT[0])
    model = Float64Net()
    tally = run_sweep(model, images, labels, np.arange(9), SweepPlan(grid, "reflect", 0.0, (0.2,), (0.4,), (8, 8)),
                      batch_size=6)
    pixels = images.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255)

    def log_probabilities(transform) -> np.ndarray:
        batch = reference(pixels, transform, "reflect", 0.0)
        with torch.no_grad():
            logits = model(torch.from_numpy((batch - np.float32(0.2)) / np.float32(0.4))).double()
        return torch.log_softmax(logits, dim=1).numpy()[np.arange(9), labels]

    true = np.stack([log_probabilities(t) for t in grid.transforms], axis=1)
    assert tally.examples, "the random model must flip some samples"
    for example in tally.examples:
        worst = grid.transforms[int(np.argmin(true[example["index"]]))]
        # worst_transform is the whole least probable transform; worst_shift its translation.
        assert tuple(example["worst_shift"]) == worst[:2]
        assert example["worst_transform"] == dict(zip(("dx", "dy", "angle", "scale", "brightness"), worst))
        assert transform_of(example["worst_transform"]) == worst in grid.transforms
        assert example["worst_probability"] == pytest.approx(float(np.exp(true[example["index"]].min())), rel=1e-9)
        # The transform it names reproduces the worst prediction, through the reference's own pixels.
        batch = reference(pixels[example["index"]:example["index"] + 1], worst, "reflect", 0.0)
        with torch.no_grad():
            again = model(torch.from_numpy((batch - np.float32(0.2)) / np.float32(0.4))).argmax(dim=1)
        assert int(again[0]) == example["worst_prediction"]


def test_a_translation_sweeps_worst_transform_is_its_shift_alone():
    grid = build_sweep_grid({"shifts": {"dx": [-1, 1], "dy": [0, 1], "step": 0.5}})
    assert grid.named(grid.transforms[3]) == {"dx": 0.5, "dy": 0.0}
    assert transform_of({"dx": 0.5, "dy": 0}) == (0.5, 0.0, 0.0, 1.0, 0.0)
    rotation = build_sweep_grid({"angle": {"list": [-10, 10]}})
    assert rotation.named(rotation.transforms[1]) == {"dx": 0.0, "dy": 0.0, "angle": 10.0, "scale": 1.0,
                                                      "brightness": 0.0}


VIEWS = [(0, 0, 0, 1, 0), (2, -1, 0, 1, 0), (0.5, -1.25, 0, 1, 0), (0, 0, 30, 1, 0), (1.5, -2, 17, 0.8, 0),
         (0, 0, 90, 1, 0.2), (1, 0, -45, 1.3, -0.3), (0.5, 0, 0, 1, 0.6), (2, -1, 0, 1, -0.4), *RANDOM[:4]]


@pytest.mark.parametrize("padding", MODES)
@pytest.mark.parametrize("channels", [1, 3])
def test_the_apis_view_of_a_transform_is_the_engines_bit_for_bit(padding, channels):
    """core.views (numpy, for the API's pictures) builds the very pixels the engine feeds the model."""
    levels = np.random.default_rng(6).integers(0, 256, (9, 11, channels), dtype=np.uint8)
    images = (levels.astype(np.float32) / np.float32(255)).transpose(2, 0, 1)[None]
    chunk = views(images, padding, 0.3)
    image = levels[..., 0] if channels == 1 else levels  # an H×W grayscale image, as datasets store one
    for transform in VIEWS:
        want = chunk.view(*transform).numpy()[0].transpose(1, 2, 0)
        got = transformed_view(image, transform, padding, 0.3, (9, 11))
        assert got.dtype == np.float32 and got.shape == want.shape, transform
        np.testing.assert_array_equal(got, want, err_msg=str(transform))
