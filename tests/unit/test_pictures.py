"""The heatmap renderer: cells land where their shifts are, colours follow the values."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from api.services.drawing import (MAX_AXIS, RED_BLUE, VIRIDIS, Lattice, auto_range, axis_positions, bar_ticks, bin_centres,
                          comparison_png, heatmap_png, sample_png)


def decode(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def rgb(color: str) -> tuple[int, int, int]:
    return tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))


def solid_box(pixels: np.ndarray, color: str) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1) of the pixels of `color` that sit inside a 5×5 block of it.

    The 5×5 test drops the colour bar's one-pixel lines and anti-aliased text.
    """
    mask = np.all(pixels == rgb(color), axis=2)
    solid = mask.copy()
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            solid[2:-2, 2:-2] &= mask[2 + dy:mask.shape[0] - 2 + dy, 2 + dx:mask.shape[1] - 2 + dx]
    solid[:2], solid[-2:], solid[:, :2], solid[:, -2:] = False, False, False, False
    ys, xs = np.nonzero(solid)
    assert xs.size, f"no solid area of {color}"
    return xs.min() - 2, ys.min() - 2, xs.max() + 2, ys.max() + 2


def grid_rows(value=lambda dx, dy: 1.0, xs=range(-2, 3), ys=range(-1, 3)) -> list[dict]:
    return [{"dx": dx, "dy": dy, "accuracy": value(dx, dy), "agreement": 1.0} for dy in ys for dx in xs]


def test_a_cell_sits_at_its_dx_column_and_dy_row():
    rows = grid_rows(lambda dx, dy: 0.0 if (dx, dy) == (2, -1) else 1.0)
    pixels = decode(heatmap_png(rows, ["accuracy"], title="t", full_scale=True))
    plot = solid_box(pixels, VIRIDIS[-1])  # every other cell is 100%: the yellow block is the plot
    cell = solid_box(pixels, VIRIDIS[0])
    width = (plot[2] - plot[0] + 1) / 5
    height = (plot[3] - plot[1] + 1) / 4
    assert width == pytest.approx(height, abs=1)  # square cells
    # dx = 2 is the last of five columns; dy = -1 the first of four rows (dy grows downwards).
    assert round((cell[0] - plot[0]) / width) == 4
    assert round((cell[1] - plot[1]) / height) == 0
    assert cell[2] == pytest.approx(plot[2], abs=2)


def test_both_metrics_render_side_by_side_on_one_scale():
    rows = grid_rows()
    single = decode(heatmap_png(rows, ["accuracy"], title="t"))
    both = decode(heatmap_png(rows, ["accuracy", "agreement"], title="t"))
    assert both.shape[0] == single.shape[0] and both.shape[1] > 1.6 * single.shape[1]


def test_agreement_is_drawn_from_its_own_column():
    rows = [{"dx": 0, "dy": 0, "accuracy": 0.0, "agreement": 1.0}, {"dx": 1, "dy": 0, "accuracy": 0.0, "agreement": 1.0}]
    pixels = decode(heatmap_png(rows, ["agreement"], title="t", full_scale=True))
    solid_box(pixels, VIRIDIS[-1])
    with pytest.raises(AssertionError):
        solid_box(pixels, VIRIDIS[0])


def test_sub_pixel_grid_gets_a_column_per_half_step():
    rows = grid_rows(lambda dx, dy: 0.0 if (dx, dy) == (0.5, 0.0) else 1.0,
                     xs=[-1, -0.5, 0, 0.5, 1], ys=[-0.5, 0, 0.5])
    pixels = decode(heatmap_png(rows, ["accuracy"], title="t", full_scale=True))
    plot, cell = solid_box(pixels, VIRIDIS[-1]), solid_box(pixels, VIRIDIS[0])
    width = (plot[2] - plot[0] + 1) / 5
    assert round((cell[0] - plot[0]) / width) == 3 and round((cell[1] - plot[1]) / width) == 1


def test_explicit_list_points_keep_their_distances():
    assert axis_positions([2, -2, 0]) == [-2, -1, 0, 1, 2]
    assert axis_positions([-1, 0, 1]) == [-1, 0, 1]
    assert axis_positions([0, 1, 3]) == [0, 1, 2, 3]  # the gap at 2 becomes an empty column
    assert axis_positions([0, 0.5, 2]) == [0, 0.5, 1, 1.5, 2]
    assert axis_positions([0, 0.001, 1000]) == [0, 0.001, 1000]  # too fine for a lattice: distinct values
    rows = [{"dx": 0, "dy": 0, "accuracy": 1.0, "agreement": 1.0}, {"dx": 3, "dy": 0, "accuracy": 0.0, "agreement": 0.0}]
    pixels = decode(heatmap_png(rows, ["accuracy"], title="t", full_scale=True))
    first, last = solid_box(pixels, VIRIDIS[-1]), solid_box(pixels, VIRIDIS[0])
    width = first[2] - first[0] + 1
    assert round((last[0] - first[0]) / width) == 3  # three cells to the right, two of them empty


def test_too_many_distinct_values_fall_into_round_bins():
    centres = bin_centres(-7.4999, 7.4999)
    assert len(centres) <= MAX_AXIS and centres[0] <= -7.4 and centres[-1] >= 7.4
    assert {round(b - a, 6) for a, b in zip(centres, centres[1:])} == {0.2}
    assert 0.0 in centres  # bins sit on multiples of their width, so 0 is a bin of its own
    assert axis_positions([k / 1000 for k in range(5000)]) == bin_centres(0, 4.999)
    lattice = Lattice((0.0, 1.0), (0.0,), binned=True)
    assert lattice.means({(0.1, 0.0): 0.2, (0.2, 0.0): 0.4, (0.9, 0.0): None}) == {(0, 0): pytest.approx(0.3),
                                                                                  (1, 0): None}


def test_a_10000_point_fractional_list_draws_a_bounded_picture():
    # On main this fell back to a 10,000×10,000 lattice: a 2.7 GB image and a 10⁸-step loop.
    rng = np.random.default_rng(0)
    pairs: set[tuple[float, float]] = set()
    while len(pairs) < 10_000:
        pairs.add((round(float(rng.uniform(-7.5, 7.5)), 4), round(float(rng.uniform(-7.5, 7.5)), 4)))
    lattice = Lattice.through(sorted(pairs))
    assert len(lattice.xs) <= MAX_AXIS and len(lattice.ys) <= MAX_AXIS and lattice.binned
    rows = [{"dx": dx, "dy": dy, "accuracy": 1.0 if dx < -0.5 else 0.0, "agreement": 1.0} for dx, dy in pairs]
    started = time.perf_counter()
    both = decode(heatmap_png(rows, ["accuracy", "agreement"], title="t", full_scale=True))
    compare = decode(comparison_png(rows, rows, "accuracy", labels=("a", "b"), title="t", full_scale=True))
    assert time.perf_counter() - started < 5
    assert both.shape[0] <= 900 and both.shape[1] <= 2000, both.shape
    assert compare.shape[0] <= 900 and compare.shape[1] <= 3000, compare.shape
    # Each cell is the mean of its shifts: all 100% left of dx = -0.5, all 0% right of it.
    single = decode(heatmap_png(rows, ["accuracy"], title="t", full_scale=True))
    right, left = solid_box(single, VIRIDIS[0]), solid_box(single, VIRIDIS[-1])
    assert left[2] < right[0]


def test_colour_scale_range_and_ticks():
    assert auto_range([0.91, 0.97], full=False) == (0.9, 1.0)
    assert auto_range([0.5], full=True) == (0.0, 1.0)
    assert auto_range([1.0, 1.0], full=False) == (0.95, 1.0)
    assert bar_ticks(0.8, 1.0) == [0.8, 0.85, 0.9, 0.95, 1.0]
    assert bar_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def test_comparison_colours_the_difference_red_for_worse_and_blue_for_better():
    base = grid_rows(lambda dx, dy: 0.9)
    other = grid_rows(lambda dx, dy: {(0, 0): 0.95, (1, 0): 0.85}.get((dx, dy), 0.9))
    pixels = decode(comparison_png(base, other, "accuracy", labels=("a", "b"), title="t"))
    better, worse = solid_box(pixels, RED_BLUE[-1]), solid_box(pixels, RED_BLUE[0])
    assert worse[0] > better[0] and worse[1] == pytest.approx(better[1], abs=4)  # (1, 0) right of (0, 0)
    with pytest.raises(ValueError, match="share no shift"):
        comparison_png(base, grid_rows(xs=[10], ys=[10]), "accuracy", labels=("a", "b"), title="t")


def test_sample_png_enlarges_pixels_without_blurring():
    image = (np.arange(64, dtype=np.uint8).reshape(8, 8, 1) * 4)
    pixels = np.asarray(Image.open(io.BytesIO(sample_png(image, 4))))
    assert pixels.shape == (32, 32)
    assert np.array_equal(pixels[::4, ::4], image[:, :, 0]) and np.array_equal(pixels[3::4, 3::4], image[:, :, 0])
    colour = np.zeros((5, 6, 3), np.uint8) + np.array([10, 200, 30], np.uint8)
    assert np.asarray(Image.open(io.BytesIO(sample_png(colour, 1)))).shape == (5, 6, 3)
