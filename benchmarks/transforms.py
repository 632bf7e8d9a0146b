"""Rotation sweeps vs the same forward passes alone, and the Engstrom grid on a LeNet and its blur-pool twin.

The cost figures follow benchmarks/engine.py: the baseline feeds the model exactly
the batches the engine feeds it (captured from one engine run), pre-built as
tensors; the engine reads uint8 images, builds each rotation from its precomputed
sampling map, normalizes, argmaxes and tallies. Goal: ≤ 1.15.

The Engstrom grid (Engstrom et al. 2019: ±3 px in 5 steps each way, ±30° in 31
steps, 5×5×31 = 775 transforms, the worst case per image) runs on the registry
LeNet trained as docs/make_figures.py trains it, max-pool beside blur-pool.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.common import (
    captured_batches,
    cpu,
    forward_alone,
    interleaved,
    lenet,
    load_average,
    mnist,
    spread,
    table,
    timed,
    use_threads,
    wall,
)
from core.grid import build_sweep_grid
from worker.engine.metrics import summary
from worker.engine.plan import SweepPlan
from worker.engine.sweep import run_sweep

ROTATION = {"angle": {"range": [-30, 30], "step": 2}}
ENGSTROM = {"shifts": {"dx": [-3, 3], "dy": [-3, 3], "step": 1.5}, "angle": {"range": [-30, 30], "step": 2}}


def cost(name: str, request: dict, count: int, repeats: int) -> list:
    """One row: the forward passes alone, the engine, their ratio (wall and CPU)."""
    images, labels = mnist(count)
    model = lenet()
    plan = SweepPlan(build_sweep_grid(request), "zeros", 0.0, (0.1307,), (0.3081,), images.shape[1:3])
    batches = captured_batches(model, images, labels, plan, 256)
    indices = np.arange(len(labels))
    times = interleaved({
        "forward": lambda: forward_alone(model, batches),
        "engine": lambda: timed(lambda: run_sweep(model, images, labels, indices, plan, batch_size=256)),
    }, repeats)
    forward, engine = times["forward"], times["engine"]
    return [name, f"{len(labels)}×{plan.grid.images_per_sample}", wall(forward), wall(engine),
            wall(engine) / wall(forward), cpu(engine) / cpu(forward),
            f"{max(spread(v) for v in times.values()) * 100:.0f}%"]


def engstrom(quick: bool) -> list[list]:
    """Clean, mean and worst-case accuracy and consistency over the Engstrom grid, per pooling."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs"))
    from make_figures import FRAME, HELD_OUT, train

    from api.services.ingest import digits

    data = digits()
    images = np.pad(data.images, ((0, 0), (FRAME, FRAME), (FRAME, FRAME), (0, 0)))
    labels = data.targets
    train_rows = np.arange(len(labels) - HELD_OUT)
    test_rows = np.arange(len(labels) - HELD_OUT, len(labels))[: 60 if quick else None]
    side = 8 + 2 * FRAME
    nets = {pool: train(pool, images[train_rows], labels[train_rows], epochs=5 if quick else 30)
            for pool in ("max", "blur")}
    rows = []
    for request, label in ((ENGSTROM, "Engstrom 5×5×31"), ({"shifts": ENGSTROM["shifts"]}, "translation 5×5"),
                           (ROTATION, "rotation ×31")):
        grid = build_sweep_grid(request)
        plan = SweepPlan(grid, "zeros", 0.0, (0.0,), (1.0,), (side, side))
        for pool, net in nets.items():
            result: dict = {}
            took = timed(lambda: result.update(summary(run_sweep(net, images, labels, test_rows, plan), grid)))
            rows.append([label, f"lenet pool={pool}", result["num_samples"], result["num_shifts"],
                         result["clean_accuracy"], result["mean_accuracy"], result["worst_case_accuracy"],
                         result["consistency"], result["flip_rate"], f"{took.wall:.1f}"])
    return rows


def main(quick: bool = False) -> str:
    use_threads(1)
    repeats = 2 if quick else 3
    out = table(
        f"Rotation sweeps vs the same forward passes alone (CPU, 1 thread, LeNet 1×28×28, median of {repeats} "
        f"interleaved runs; goal: ratio ≤ 1.15; load {load_average()})",
        ["sweep", "samples×images", "forward s", "engine s", "ratio wall", "ratio CPU", "run spread"],
        [cost("rotation, 31 angles ±30°", ROTATION, 100 if quick else 1000, repeats),
         cost("Engstrom: 5×5 shifts × 31 angles", ENGSTROM, 20 if quick else 200, repeats)],
    )
    out += "\n" + table(
        f"The Engstrom grid on held-out digits (20×20, zeros padding; load {load_average()})",
        ["grid", "model", "samples", "transforms", "clean", "mean", "worst case", "consistency", "flip rate",
         "sweep s"],
        engstrom(quick),
    )
    return out


if __name__ == "__main__":
    main()
