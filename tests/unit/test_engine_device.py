"""The engine on SHIFTSCORE_DEVICE (default cpu; benchmarks/gpu_check.sh sets cuda) against the CPU reference.

Imports only the engine and tests.reference, so it runs on a bare GPU machine
(torch, numpy, scipy, pytest) with `pytest --noconftest`. The model computes in
float64, so no kernel choice on any device can move an argmax.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
import pytest
import torch

from tests.reference import reference_sweep
from tests.unit.test_shift_exactness import Float64Net
from worker.engine.device import pick_device
from worker.engine.early_exit import run_worst_case
from core.grid import build_grid, build_sweep_grid
from worker.engine.metrics import shift_rows, summary
from worker.engine.plan import SweepPlan
from worker.engine.sweep import run_sweep

DEVICE = pick_device(os.environ.get("SHIFTSCORE_DEVICE", "cpu"))
KEYS = ("clean_accuracy", "mean_accuracy", "worst_case_accuracy", "consistency", "flip_rate")


COUNT = 24
SPECS = ({"dx": [-3, 3], "dy": [-2, 2], "step": 1}, {"dx": [-1.5, 1.5], "dy": [-1, 0.5], "step": 0.5})


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(21)
    return rng.integers(0, 256, size=(COUNT, 8, 8, 1), dtype=np.uint8), rng.integers(0, 4, size=COUNT)


@pytest.fixture(scope="module")
def data():
    return _data()


@lru_cache(maxsize=None)
def _reference(mode: str, which: int) -> dict:
    """The CPU reference, one image at a time (slow: computed once per mode and grid)."""
    images, labels = _data()
    return reference_sweep(Float64Net(), images, labels, build_grid(SPECS[which]), mode, 0.25, 0.1, 0.5)[2]


def test_the_device_is_the_one_asked_for():
    assert DEVICE.type == os.environ.get("SHIFTSCORE_DEVICE", "cpu").split(":")[0]
    if DEVICE.type == "cuda":
        assert torch.cuda.is_available()


@pytest.mark.parametrize("mode", ["zeros", "circular", "reflect", "edge"])
@pytest.mark.parametrize("which", [0, 1])
@pytest.mark.parametrize("batch_size", [16, 256])
def test_sweep_on_device_equals_cpu_reference(data, mode, which, batch_size):
    images, labels = data
    grid = build_grid(SPECS[which])
    plan = SweepPlan(grid, mode, 0.25, (0.1,), (0.5,), (8, 8))
    tally = run_sweep(Float64Net().to(DEVICE), images, labels, np.arange(COUNT), plan, batch_size=batch_size,
                      device=DEVICE)
    ref = _reference(mode, which)
    got = summary(tally, grid)
    for key in KEYS:
        assert got[key] == pytest.approx(ref[key], abs=1e-12) if ref[key] is not None else got[key] is None, key
    assert [r["accuracy"] for r in shift_rows(tally, grid)] == pytest.approx(ref["accuracy"], abs=1e-12)
    assert [r["agreement"] for r in shift_rows(tally, grid)] == pytest.approx(ref["agreement"], abs=1e-12)


@pytest.mark.parametrize("prefetch", [False, True])
def test_prefetch_on_device_changes_nothing(data, prefetch):
    images, labels = data
    grid = build_grid({"dx": [-2, 2], "dy": [-2, 2], "step": 1})
    plan = SweepPlan(grid, "zeros", 0.0, (0.1,), (0.5,), (8, 8))
    model = Float64Net().to(DEVICE)
    a = run_sweep(model, images, labels, np.arange(COUNT), plan, batch_size=10, device=DEVICE, prefetch=prefetch)
    b = run_sweep(model, images, labels, np.arange(COUNT), plan, batch_size=10, device=DEVICE, prefetch=not prefetch)
    assert a.to_json() == b.to_json()


def test_worst_case_gate_on_device_equals_full_sweep(data):
    images, labels = data
    grid = build_grid({"dx": [-1, 1], "dy": [-1, 1], "step": 0.5})
    plan = SweepPlan(grid, "reflect", 0.0, (0.1,), (0.5,), (8, 8))
    model = Float64Net().to(DEVICE)
    full = run_sweep(model, images, labels, np.arange(COUNT), plan, batch_size=32, device=DEVICE)
    gated = run_worst_case(model, images, labels, np.arange(COUNT), plan, batch_size=32, device=DEVICE)
    assert (gated.n, gated.clean_correct, gated.worst_correct) == (full.n, full.clean_correct, full.worst_correct)


@pytest.mark.parametrize("mode", ["zeros", "circular", "reflect", "edge"])
def test_transform_sweep_on_device_equals_the_cpu_sweep(data, mode):
    # Rotation, scale and brightness go through precomputed sampling maps applied on the device.
    images, labels = data
    grid = build_sweep_grid({"shifts": {"dx": [-1, 1], "dy": [0, 0], "step": 1},
                             "angle": {"list": [-30, 0, 45, 90]}, "scale": {"list": [0.8, 1.0, 1.25]},
                             "brightness": {"list": [0.7, 1.0]}})
    plan = SweepPlan(grid, mode, 0.25, (0.1,), (0.5,), (8, 8))
    on_device = run_sweep(Float64Net().to(DEVICE), images, labels, np.arange(COUNT), plan, batch_size=64,
                          device=DEVICE)
    on_cpu = run_sweep(Float64Net(), images, labels, np.arange(COUNT), plan, batch_size=64, device="cpu")
    got, want = summary(on_device, grid), summary(on_cpu, grid)
    for key in KEYS:
        assert got[key] == pytest.approx(want[key], abs=1e-12) if want[key] is not None else got[key] is None, key
    assert shift_rows(on_device, grid) == shift_rows(on_cpu, grid)
