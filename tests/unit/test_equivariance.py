"""Segmentation sweeps and the equivariance comparison (SPEC §3) against loops written from the spec."""

from __future__ import annotations

import itertools
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from core.grid import build_grid
from tests.reference import reference_crop, reference_shift
from worker.architectures import make_pool
from worker.engine.equivariance import comparable_offset, compared_pair, downsampling_factor, squared_sums
from worker.engine.plan import SweepError, SweepPlan
from worker.engine.segmentation import (
    SegmentationTally,
    run_segmentation_sweep,
    segmentation_rows,
    segmentation_summary,
)


def reference_equivariance(ref: np.ndarray, got: np.ndarray, a: int, b: int, circular: bool):
    """(Σ diff², Σ ref², cells, argmax agreements) cell by cell, from SPEC §3's wording."""
    _, height, width = ref.shape
    diff = norm = 0.0
    cells = agreed = 0
    for y, x in itertools.product(range(height), range(width)):
        sy, sx = y - b, x - a
        if circular:
            sy, sx = sy % height, sx % width
        elif not (0 <= sy < height and 0 <= sx < width):
            continue
        diff += float(((got[:, y, x] - ref[:, sy, sx]) ** 2).sum())
        norm += float((ref[:, sy, sx] ** 2).sum())
        cells += 1
        agreed += int(got[:, y, x].argmax() == ref[:, sy, sx].argmax())
    return diff, norm, cells, agreed


def test_compared_cells_match_the_loops():
    rng = np.random.default_rng(0)
    ref, got = rng.random((2, 3, 5, 6)), rng.random((2, 3, 5, 6))
    for circular, (a, b) in itertools.product((False, True), [(0, 0), (2, -1), (-3, 4), (5, 0)]):
        pair = compared_pair(torch.from_numpy(ref), torch.from_numpy(got), (a, b), circular)
        want = [reference_equivariance(r, g, a, b, circular) for r, g in zip(ref, got)]
        if pair is None:
            assert not circular and sum(w[2] for w in want) == 0
            continue
        diff, norm = squared_sums(*pair)
        assert diff == pytest.approx(sum(w[0] for w in want), rel=1e-12)
        assert norm == pytest.approx(sum(w[1] for w in want), rel=1e-12)
        assert pair[1][0, 0].numel() == want[0][2]


def test_factor_and_comparability():
    assert downsampling_factor((32, 32), (8, 8)) == 4
    assert downsampling_factor((8, 8), (7, 7)) is None
    assert downsampling_factor((16, 8), (8, 2)) is None
    assert comparable_offset(4, -2, 2) == (2, -1)
    assert comparable_offset(3, 0, 2) is None
    assert comparable_offset(0.5, 0, 1) is None
    assert comparable_offset(1, 1, None) is None


class SegNet(nn.Module):
    """conv → pool → conv → ×r upsampling back (or not): N×K×(H/r)×(W/r) logits, float64 inside."""

    def __init__(self, pool: str = "max", classes: int = 3, upsample: bool = True, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(1, 8, 3, padding=1, padding_mode="circular"), relu1=nn.ReLU(),
            pool=make_pool(pool, 3),
            conv2=nn.Conv2d(8, classes, 3, padding=1, padding_mode="circular"),
        )).double()
        self.up = nn.Upsample(scale_factor=2) if upsample else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.body(x.double()))


def reference_segmentation(model, images, masks, grid, mode, crop_hw=None):
    """Every image and mask shifted alone, the model per image, then SPEC §3 and IoU by loops."""
    floats = images.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255)
    k = None

    def move(array: np.ndarray, dx: int, dy: int, fill: float) -> np.ndarray:
        if crop_hw:
            return reference_crop(array, dx, dy, *crop_hw)
        return reference_shift(array, dx, dy, mode, fill)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x[None])).numpy()[0]

    clean = [run(move(f, 0, 0, 0.0)) for f in floats]
    rows = []
    for dx, dy in grid.shifts:
        outs = [run(move(f, int(dx), int(dy), 0.0)) for f in floats]
        k = outs[0].shape[0]
        r = floats.shape[2] // outs[0].shape[1] if not crop_hw else crop_hw[0] // outs[0].shape[1]
        hits, union_p, union_t = np.zeros(k), np.zeros(k), np.zeros(k)
        pixels = correct = 0
        for out, mask in zip(outs, masks):
            truth = move(mask[None].astype(np.float32), int(dx), int(dy), -1.0)[0]
            pred = np.kron(out.argmax(0), np.ones((r, r), dtype=np.int64))
            for y, x in zip(*np.nonzero(truth >= 0)):
                t, p = int(truth[y, x]), int(pred[y, x])
                pixels += 1
                correct += t == p
                hits[t] += t == p
                union_t[t] += 1
                union_p[p] += 1
        union = union_p + union_t - hits
        miou = float(np.mean(hits[union > 0] / union[union > 0]))
        sums = [0.0, 0.0, 0, 0]
        if dx % r == 0 and dy % r == 0:
            for ref, out in zip(clean, outs):
                for i, v in enumerate(reference_equivariance(ref, out, int(dx) // r, int(dy) // r, mode == "circular")):
                    sums[i] += v
        rows.append({
            "accuracy": correct / pixels, "miou": miou,
            "equivariance_error": np.sqrt(sums[0] / sums[1]) if sums[2] else None,
            "pixel_agreement": sums[3] / sums[2] if sums[2] else None,
        })
    return rows


@pytest.fixture(scope="module")
def seg_data():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(6, 12, 12, 1), dtype=np.uint8)
    masks = (images[..., 0] // 90).astype(np.int64)  # classes 0, 1, 2 that follow the pixels
    return images, masks


@pytest.mark.parametrize("mode", ["zeros", "circular", "reflect", "edge", "crop"])
@pytest.mark.parametrize("upsample", [True, False])
def test_segmentation_rows_equal_the_reference(seg_data, mode, upsample):
    images, masks = seg_data
    model = SegNet(upsample=upsample)
    hw = (8, 8) if mode == "crop" else (12, 12)
    grid = build_grid({"dx": [-2, 1], "dy": [-1, 2], "step": 1})
    plan = SweepPlan(grid, mode, 0.0, (0.0,), (1.0,), hw)
    tally = run_segmentation_sweep(model, images, masks, np.arange(6), plan, batch_size=4)
    rows = segmentation_rows(tally, grid.shifts)
    want = reference_segmentation(model, images, masks, grid, mode, hw if mode == "crop" else None)
    for got, ref in zip(rows, want):
        assert got["accuracy"] == pytest.approx(ref["accuracy"], abs=1e-12)
        assert got["miou"] == pytest.approx(ref["miou"], abs=1e-12)
        assert (got["pixel_agreement"] is None) == (ref["pixel_agreement"] is None)
        if ref["pixel_agreement"] is not None:
            assert got["pixel_agreement"] == pytest.approx(ref["pixel_agreement"], abs=1e-12)
            assert got["equivariance_error"] == pytest.approx(ref["equivariance_error"], rel=1e-9, abs=1e-12)
    if not upsample:
        # r = 2: only even shifts are comparable
        assert [r["equivariance_error"] is not None for r in rows] == [
            dx % 2 == 0 and dy % 2 == 0 for dx, dy in grid.shifts
        ]
    summary = segmentation_summary(tally, rows)
    assert summary["num_samples"] == 6 and summary["num_shifts"] == 16
    assert summary["output_factor"] == (1 if upsample else 2)
    assert summary["mean_miou"] == pytest.approx(np.mean([r["miou"] for r in want]), abs=1e-12)


def test_fractional_shifts_have_no_mask_metrics(seg_data):
    images, masks = seg_data
    grid = build_grid({"list": [[0.5, 0], [1, 0]]})
    plan = SweepPlan(grid, "reflect", 0.0, (0.0,), (1.0,), (12, 12))
    rows = segmentation_rows(run_segmentation_sweep(SegNet(), images, masks, np.arange(6), plan), grid.shifts)
    assert rows[0]["miou"] is None and rows[0]["equivariance_error"] is None and rows[0]["accuracy"] is None
    assert rows[1]["miou"] is not None and rows[1]["equivariance_error"] is not None


def test_max_pool_breaks_equivariance_for_odd_shifts_and_blur_lowers_it(seg_data):
    images, masks = seg_data
    grid = build_grid({"dx": [-3, 3], "dy": [0, 0]})
    plan = SweepPlan(grid, "circular", 0.0, (0.0,), (1.0,), (12, 12))
    errors = {}
    for pool in ("max", "blur"):
        tally = run_segmentation_sweep(SegNet(pool), images, masks, np.arange(6), plan)
        errors[pool] = {dx: r["equivariance_error"] for (dx, _), r in zip(grid.shifts, segmentation_rows(tally, grid.shifts))}
    odd, even = [-3, -1, 1, 3], [-2, 0, 2]
    # circular convolutions, 2×2 max pooling and ×2 upsampling commute exactly with even shifts
    assert max(errors["max"][dx] for dx in even) < 1e-12
    assert min(errors["max"][dx] for dx in odd) > 0.05
    assert np.mean([errors["blur"][dx] for dx in odd]) < 0.75 * np.mean([errors["max"][dx] for dx in odd])


def test_a_classifier_is_refused_with_a_message(seg_data):
    images, masks = seg_data
    plan = SweepPlan(build_grid({"list": [[1, 0]]}), "zeros", 0.0, (0.0,), (1.0,), (12, 12))
    with pytest.raises(SweepError, match="N×K×H'×W'"):
        run_segmentation_sweep(lambda x: torch.zeros(x.shape[0], 3), images, masks, np.arange(6), plan)
    with pytest.raises(SweepError, match="class maps"):
        run_segmentation_sweep(lambda x: torch.zeros(x.shape[0], 2, 12, 12), images, masks, np.arange(6), plan)


def test_segmentation_reports_progress_and_resumes_from_a_checkpoint(seg_data):
    images, masks = seg_data
    grid = build_grid({"list": [[1, 0], [-2, 1], [0.5, 0]]})
    plan = SweepPlan(grid, "reflect", 0.0, (0.0,), (1.0,), (12, 12))
    whole = run_segmentation_sweep(SegNet(), images, masks, np.arange(6), plan, batch_size=4)
    progress, checkpoints = [], []
    run_segmentation_sweep(SegNet(), images, masks, np.arange(6), plan, batch_size=4, on_progress=progress.append,
                           on_chunk=lambda t, nxt: checkpoints.append((t.to_json(), nxt)))
    # (0, 0) is not in the grid: each sample takes the 3 shifts and the reference
    assert progress == [4, 8, 12, 16, 18, 20, 22, 24]
    assert [nxt for _, nxt in checkpoints] == [4, 6]
    saved, start = checkpoints[0]
    resumed = run_segmentation_sweep(SegNet(), images, masks, np.arange(6), plan, batch_size=4,
                                     tally=SegmentationTally.from_json(saved), start=start, prefetch=True)
    assert resumed.to_json() == whole.to_json()
