"""The engine's fast paths (normalized canvas, prefetch, chunked reads) change nothing in the results."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.grid import build_grid
from tests.reference import reference_shift, reference_subpixel
from worker.engine.plan import SweepError, SweepPlan
from worker.engine.sweep import run_sweep

MODES = ["zeros", "circular", "reflect", "edge"]


class Float64Net(torch.nn.Module):
    """Computes per image in float64, so its predictions cannot depend on the batch it sits in."""

    def __init__(self, channels: int = 1, classes: int = 5) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.weight = torch.randn(classes, channels * 8 * 8, generator=generator, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).to(torch.float64) @ self.weight.T


class Recorder:
    """Calls the model and keeps a copy of every batch it was given."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.batches = model, []

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.batches.append(batch.clone())
        return self.model(batch)


class ReadLog:
    """A uint8 image array that logs how many rows each read asks for."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.reads = array, []
        self.shape, self.ndim = array.shape, array.ndim

    def __getitem__(self, rows):
        self.reads.append(len(np.atleast_1d(np.arange(len(self.array))[rows])))
        return self.array[rows]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    return rng.integers(0, 256, size=(23, 8, 8, 1), dtype=np.uint8), rng.integers(0, 5, size=23)


MIXED = {"list": [[-2, 1], [0.5, 0], [1, -1.5], [3, 2], [-0.25, -0.75]]}


@pytest.mark.parametrize("spec", [{"dx": [-2, 2], "dy": [-1, 1]}, MIXED])
@pytest.mark.parametrize("batch_size", [4, 32])
def test_prefetch_on_and_off_give_identical_tallies(data, spec, batch_size):
    images, labels = data
    plan = SweepPlan(build_grid(spec), "reflect", 0.0, (0.2,), (0.4,), (8, 8))
    on = run_sweep(Float64Net(), images, labels, np.arange(23), plan, batch_size=batch_size, prefetch=True)
    off = run_sweep(Float64Net(), images, labels, np.arange(23), plan, batch_size=batch_size, prefetch=False)
    assert on.to_json() == off.to_json()
    assert on.n == 23


@pytest.mark.parametrize("mode", MODES)
def test_model_sees_normalized_reference_shifts_bit_for_bit(data, mode):
    images, labels = data
    grid = build_grid({"dx": [-3, 3], "dy": [-2, 2]})
    plan = SweepPlan(grid, mode, 0.6, (0.3,), (0.7,), (8, 8))
    recorder = Recorder(Float64Net())
    run_sweep(recorder, images[:5], labels[:5], np.arange(5), plan, batch_size=64)
    seen = torch.cat(recorder.batches).numpy().reshape(len(grid.shifts), 5, 1, 8, 8)
    floats = images[:5].astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255)
    mean, std = np.float32(0.3), np.float32(0.7)
    for s, (dx, dy) in enumerate(grid.shifts):
        want = np.stack([reference_shift(im, int(dx), int(dy), mode, np.float32(0.6)) for im in floats])
        np.testing.assert_array_equal(seen[s], (want - mean) / std)


def test_subpixel_shifts_are_interpolated_before_normalizing(data):
    images, labels = data
    grid = build_grid(MIXED)
    plan = SweepPlan(grid, "edge", 0.0, (0.3,), (0.7,), (8, 8))
    recorder = Recorder(Float64Net())
    run_sweep(recorder, images[:4], labels[:4], np.arange(4), plan, batch_size=64)
    seen = torch.cat(recorder.batches).numpy().reshape(-1, 4, 1, 8, 8)
    floats = images[:4].astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255)
    for s, (dx, dy) in enumerate(grid.shifts):
        want = np.stack([reference_subpixel(im, dx, dy, "edge", 0.0).astype(np.float32) for im in floats])
        np.testing.assert_allclose(seen[s], (want - np.float32(0.3)) / np.float32(0.7), rtol=0, atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 5, 23, 100, 1000])
def test_batch_size_changes_nothing(data, batch_size):
    images, labels = data
    plan = SweepPlan(build_grid({"dx": [-1, 2], "dy": [-1, 1]}), "zeros", 0.1, (0.0,), (1.0,), (8, 8))
    whole = run_sweep(Float64Net(), images, labels, np.arange(23), plan, batch_size=64).to_json()
    got = run_sweep(Float64Net(), images, labels, np.arange(23), plan, batch_size=batch_size).to_json()
    # Counts and choices are exact; a probability is a float that BLAS may sum in another order
    # when the batch is cut differently, so it is compared to the last few bits only.
    probabilities = [[e.pop("worst_probability") for e in tally["examples"]] for tally in (got, whole)]
    assert got == whole
    assert probabilities[0] == pytest.approx(probabilities[1], rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("prefetch", [True, False])
def test_images_are_read_one_chunk_at_a_time(data, prefetch):
    images, labels = data
    log = ReadLog(images)
    plan = SweepPlan(build_grid({"dx": [-2, 2], "dy": [-2, 2]}), "zeros", 0.0, (0.0,), (1.0,), (8, 8))
    run_sweep(Float64Net(), log, labels, np.arange(23), plan, batch_size=6, prefetch=prefetch)
    assert log.reads == [6, 6, 6, 5]  # each sample read once, never more than a batch at once


def test_memory_mapped_dataset_gives_the_same_tally(data, tmp_path):
    images, labels = data
    np.save(tmp_path / "images.npy", images)
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r")
    plan = SweepPlan(build_grid({"dx": [-2, 2], "dy": [0, 1]}), "circular", 0.0, (0.5,), (0.5,), (8, 8))
    got = run_sweep(Float64Net(), mapped, labels, np.arange(23), plan, batch_size=8)
    assert got.to_json() == run_sweep(Float64Net(), images, labels, np.arange(23), plan, batch_size=8).to_json()


def test_three_channel_images_reach_the_model_as_plain_nchw():
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    recorder = Recorder(Float64Net(channels=3))
    plan = SweepPlan(build_grid({"list": [[1, 0]]}), "zeros", 0.0, (0.1, 0.2, 0.3), (1.0,), (8, 8))
    run_sweep(recorder, images, np.array([0, 1, 2]), [0, 1, 2], plan)
    assert all(batch.is_contiguous() for batch in recorder.batches)
    first = recorder.batches[0][:3]  # the (1, 0) shift: column 0 is the fill, the rest moved right
    floats = images.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255)
    mean = np.array([0.1, 0.2, 0.3], dtype=np.float32)[:, None, None]
    np.testing.assert_array_equal(first[:, :, :, 1:].numpy(), floats[:, :, :, :-1] - mean)
    np.testing.assert_array_equal(first[:, :, :, 0].numpy(), np.broadcast_to(-mean[:, :, 0], (3, 3, 8)))


def test_one_row_of_logits_per_image_is_required(data):
    images, labels = data
    plan = SweepPlan(build_grid({"list": [[1, 0]]}), "zeros", 0.0, (0.0,), (1.0,), (8, 8))
    with pytest.raises(SweepError, match="one row per image"):
        run_sweep(lambda x: torch.zeros(1, 5), images, labels, np.arange(23), plan)


def test_non_finite_output_fails_even_on_the_last_batch_of_a_chunk(data):
    images, labels = data
    plan = SweepPlan(build_grid({"dx": [0, 3], "dy": [0, 0]}), "zeros", 0.0, (0.0,), (1.0,), (8, 8))
    calls = []

    def late_nan(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        out = torch.zeros(x.shape[0], 5)
        if len(calls) == 2:  # 4 shifts, 2 per batch: the chunk's last batch
            out[-1, 2] = float("inf")
        return out

    with pytest.raises(SweepError, match="not finite"):
        run_sweep(late_nan, images, labels, np.arange(23), plan, batch_size=64, on_chunk=lambda *_: None)
