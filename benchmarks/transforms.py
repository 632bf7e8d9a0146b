"""Rotation sweeps vs the same forward passes alone, and the Engstrom grid on a LeNet and its blur-pool twin.

The cost figures follow benchmarks/engine.py: the baseline feeds the model exactly
the batches the engine feeds it (captured from one engine run), pre-built as
tensors; the engine reads uint8 images, builds each rotation from its precomputed
sampling map, normalizes, argmaxes and tallies. Goal: ≤ 1.15.

The Engstrom grid (Engstrom et al. 2019: ±3 px in 5 steps each way, ±30° in 31
steps, 5×5×31 = 775 transforms, the worst case per image) runs on the registry
LeNet trained as docs/make_figures.py trains it, max-pool beside blur-pool, and
beside it IBM ART's `SpatialTransformation` on the same models, images and grid as
ART can express it (the `bench` extra: `pip install -e '.[bench]'`). ART searches
for one transform applied to every image and reports a fooling rate; ShiftScore's
worst case gives each image its own worst transform. The per-axis curves of the
Engstrom sweep are written to docs/img/engstrom_curves_<pool>.png.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

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
from api.services.curves import curves_png
from core.grid import build_sweep_grid
from core.marginals import marginal_rows
from worker.engine.metrics import shift_rows, summary
from worker.engine.plan import SweepPlan
from worker.engine.sweep import run_sweep

ROTATION = {"angle": {"range": [-30, 30], "step": 2}}
ENGSTROM = {"shifts": {"dx": [-3, 3], "dy": [-3, 3], "step": 1.5}, "angle": {"range": [-30, 30], "step": 2}}
FIGURES = Path(__file__).resolve().parents[1] / "docs" / "img"


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


def held_out_digits(quick: bool):
    """The 297 held-out digits on docs/make_figures.py's black frame, the training rows, the side."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs"))
    from make_figures import FRAME, HELD_OUT

    from core.ingest import digits

    data = digits()
    images = np.pad(data.images, ((0, 0), (FRAME, FRAME), (FRAME, FRAME), (0, 0)))
    labels = data.targets
    train_rows = np.arange(len(labels) - HELD_OUT)
    test_rows = np.arange(len(labels) - HELD_OUT, len(labels))[: 60 if quick else None]
    return images, labels, train_rows, test_rows, 8 + 2 * FRAME


def trained_nets(images, labels, train_rows, quick: bool) -> dict[str, nn.Module]:
    from make_figures import train

    return {pool: train(pool, images[train_rows], labels[train_rows], epochs=5 if quick else 30)
            for pool in ("max", "blur")}


def engstrom(images, labels, test_rows, side, nets) -> list[list]:
    """Clean, mean and worst-case accuracy and consistency over the Engstrom grid, per pooling."""
    rows = []
    for request, label in ((ENGSTROM, "Engstrom 5×5×31"), ({"shifts": ENGSTROM["shifts"]}, "translation 5×5"),
                           (ROTATION, "rotation ×31")):
        grid = build_sweep_grid(request)
        plan = SweepPlan(grid, "zeros", 0.0, (0.0,), (1.0,), (side, side))
        for pool, net in nets.items():
            result: dict = {}
            took = timed(lambda: result.update(tally=run_sweep(net, images, labels, test_rows, plan)))
            numbers = summary(result["tally"], grid)
            rows.append([label, f"lenet pool={pool}", numbers["num_samples"], numbers["num_shifts"],
                         numbers["clean_accuracy"], numbers["mean_accuracy"], numbers["worst_case_accuracy"],
                         numbers["consistency"], numbers["flip_rate"], f"{took.wall:.1f}"])
            if request is ENGSTROM:
                marginals = marginal_rows(shift_rows(result["tally"], grid), grid.named_axes)
                picture = curves_png(marginals, title=f"Engstrom grid, registry LeNet, {pool} pooling",
                                     subtitle=f"{numbers['num_samples']} held-out digits, 20×20, zeros padding")
                (FIGURES / f"engstrom_curves_{pool}.png").write_bytes(picture)
    return rows


def art_rows(images, labels, test_rows, side, nets) -> list[list]:
    """ART's grid search for one global transform, on the same nets and held-out digits.

    ART's grid is ±3 px in 5 steps each way, which it rounds to whole pixels (−3, −2, 0,
    2, 3), × ±30° in 31 steps; it moves images with cubic splines (scipy's order 3).
    """
    from benchmarks.alternatives import ChannelsLast

    try:
        from art.attacks.evasion import SpatialTransformation
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        return [["IBM ART not installed (pip install -e '.[bench]')", *["—"] * 6]]
    floats = images[test_rows].astype(np.float32) / np.float32(255)
    rows = []
    for pool, net in nets.items():
        classifier = PyTorchClassifier(
            model=ChannelsLast(net), loss=nn.CrossEntropyLoss(), input_shape=(side, side, 1), nb_classes=10,
            clip_values=(0.0, 1.0), channels_first=False, device_type="cpu",
        )
        attack = SpatialTransformation(classifier, max_translation=100 * 3 / side, num_translations=5,
                                       max_rotation=30.0, num_rotations=31, verbose=False)
        result: dict = {}
        took = timed(lambda: result.update(adversarial=attack.generate(floats)))
        predicted = classifier.predict(result["adversarial"], batch_size=256).argmax(axis=1)
        accuracy = float((predicted == labels[test_rows]).mean())
        chosen = f"({attack.attack_trans_x}, {attack.attack_trans_y}) px, {attack.attack_rot:g}°"
        rows.append([f"IBM ART SpatialTransformation, lenet pool={pool}", len(test_rows), "5×5×31 (integer px)",
                     chosen, f"fooling rate {attack.fooling_rate:.3f}", accuracy, f"{took.wall:.1f}"])
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
    images, labels, train_rows, test_rows, side = held_out_digits(quick)
    nets = trained_nets(images, labels, train_rows, quick)
    out += "\n" + table(
        f"The Engstrom grid on held-out digits (20×20, zeros padding, 1 thread; load {load_average()})",
        ["grid", "model", "samples", "transforms", "clean", "mean", "worst case", "consistency", "flip rate",
         "sweep s"],
        engstrom(images, labels, test_rows, side, nets),
    )
    out += "\n" + table(
        f"IBM ART SpatialTransformation on the same models and digits, 1 thread (load {load_average()}): "
        "one transform for every image, the one that changes the most predictions",
        ["method", "samples", "grid", "transform it chose", "what it reports", "accuracy under it", "attack s"],
        art_rows(images, labels, test_rows, side, nets),
    )
    return out


if __name__ == "__main__":
    main()
