"""The worst-case gate against the full sweep: same clean and worst-case counts, far fewer images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.models import DIGITS_INPUT, circular_invariant_cnn, digits_arrays, trained_digits_cnn
from core import architecture_catalog
from worker import architectures
from worker.engine.early_exit import gate_order, run_worst_case
from core.grid import build_grid
from worker.engine.metrics import summary, worst_case_summary
from worker.engine.plan import SweepPlan
from worker.engine.sweep import run_sweep


def _lenet(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return architectures.build("lenet", architecture_catalog.validate_options("lenet", {}), 1).eval()


def _tiny(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3)).eval()


class Counting(nn.Module):
    """Counts the images it is given."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.images = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += len(x)
        return self.model(x)


def _data(size: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(40, size, size, 1), dtype=np.uint8), rng.integers(0, classes, size=40)


@pytest.mark.parametrize("case", ["lenet", "circular", "tiny"])
@pytest.mark.parametrize("padding", ["zeros", "circular"])
def test_worst_case_equals_full_sweep(case, padding):
    size, classes, model = {
        "lenet": (28, 10, _lenet(1)), "circular": (12, 10, circular_invariant_cnn(2)), "tiny": (9, 3, _tiny(3)),
    }[case]
    images, labels = _data(size, classes, 4)
    with torch.inference_mode():
        model(torch.zeros(1, 1, size, size))  # sizes a lazy layer
    # A model right on most samples' clean view: the labels are its own clean predictions, mostly.
    with torch.inference_mode():
        clean = model(torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) / 255)).argmax(1).numpy()
    labels = np.where(np.arange(40) % 5 == 0, labels, clean)
    grid = build_grid({"dx": [-3, 3], "dy": [-2, 3], "step": 1})
    plan = SweepPlan(grid, padding, 0.0, (0.0,), (1.0,), (size, size))
    full = summary(run_sweep(model, images, labels, np.arange(40), plan, batch_size=64), grid)
    counting = Counting(model)
    gated = worst_case_summary(run_worst_case(counting, images, labels, np.arange(40), plan, batch_size=64), grid)
    assert gated["worst_case_accuracy"] == full["worst_case_accuracy"]
    assert gated["clean_accuracy"] == full["clean_accuracy"]
    assert gated["mean_accuracy"] is None and gated["consistency"] is None and gated["flip_rate"] is None
    assert "early_exit" in gated["note"]
    assert counting.images <= 40 * plan.grid.images_per_sample


def test_trained_digits_model_gate_equals_full_sweep():
    """A real, fragile model on real digits: the worst case is neither 0 nor the clean accuracy."""
    images, labels = digits_arrays()
    model = Counting(trained_digits_cnn(epochs=4))
    grid = build_grid({"dx": [-1, 1], "dy": [-1, 1], "step": 1})
    plan = SweepPlan(grid, "zeros", 0.0, tuple(DIGITS_INPUT["mean"]), tuple(DIGITS_INPUT["std"]), (8, 8))
    rows = np.arange(0, len(labels), 3)
    full = summary(run_sweep(model, images, labels, rows, plan, batch_size=256), grid)
    swept, model.images = model.images, 0
    gated = worst_case_summary(run_worst_case(model, images, labels, rows, plan, batch_size=256), grid)
    assert 0 < full["worst_case_accuracy"] < full["clean_accuracy"]
    assert (gated["worst_case_accuracy"], gated["clean_accuracy"]) == (full["worst_case_accuracy"],
                                                                       full["clean_accuracy"])
    assert model.images < swept


def test_gate_resumes_from_a_checkpoint_and_stops_failing_samples_early():
    images, labels = _data(28, 10, 6)
    model = Counting(_lenet(5))
    grid = build_grid({"dx": [-3, 3], "dy": [-3, 3], "step": 1})
    plan = SweepPlan(grid, "zeros", 0.0, (0.0,), (1.0,), (28, 28))
    whole = run_worst_case(model, images, labels, np.arange(40), plan, batch_size=16)
    # random labels: most samples fail at once, so far fewer than N × S images are run
    assert model.images < 40 * plan.grid.images_per_sample / 4
    saved = []
    run_worst_case(model, images, labels, np.arange(40), plan, batch_size=16,
                   on_chunk=lambda tally, stop: saved.append((tally.to_json(), stop)))
    first, stop = saved[0]
    from worker.engine.tally import Tally

    resumed = run_worst_case(model, images, labels, np.arange(40), plan, batch_size=16,
                             tally=Tally.from_json(first), start=stop)
    assert (resumed.n, resumed.clean_correct, resumed.worst_correct) == (whole.n, whole.clean_correct,
                                                                         whole.worst_correct)


def test_gate_order_is_fixed_reference_then_farthest_first():
    plan = SweepPlan(build_grid({"dx": [-1, 1], "dy": [0, 1], "step": 1}), "zeros", 0.0, (0.0,), (1.0,), (4, 4))
    assert gate_order(plan) == [(0.0, 0.0), (-1.0, 1.0), (1.0, 1.0), (-1.0, 0.0), (1.0, 0.0), (0.0, 1.0)]


def test_an_early_exit_classification_is_swept_by_the_gate_and_finished_as_worst_case():
    from worker.completion import FINISHERS
    from worker.engine.plan import sweep_kind
    from worker.sandbox.runner import ENGINES

    assert sweep_kind("classification", {"early_exit": True}) == "worst_case"
    assert sweep_kind("classification", {"early_exit": False}) == "classification"
    assert sweep_kind("segmentation", {}) == "segmentation"
    assert ENGINES["worst_case"].run is run_worst_case
    assert ENGINES["classification"].run is run_sweep
    # Every kind a chunk is swept as has a finisher that records it, and no finisher waits for a kind never swept.
    assert set(ENGINES) == set(FINISHERS)
