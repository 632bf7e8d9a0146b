"""ShiftScore's engine vs what a user would write instead, on the same model, data and grid.

- IBM ART's `SpatialTransformation` (translations only, the same 9×9 integer grid):
  it shifts the whole array with `scipy.ndimage.shift` per grid point, then asks the
  classifier for predictions (ART predicts one image at a time there).
- A naive loop: for each shift, shift every image alone with
  `scipy.ndimage.shift(order=1, mode="grid-constant")` (SPEC §1's definition),
  normalize, and run all of that shift's images through the model in one forward batch.
The naive loop's per-shift accuracies must equal the engine's exactly; the table says so.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from benchmarks.common import (
    MNIST_MEAN,
    MNIST_STD,
    lenet,
    load_average,
    mnist,
    plan_for,
    table,
    timed,
    use_threads,
)
from worker.engine.metrics import shift_rows
from worker.engine.sweep import run_sweep
from worker.sandbox import backends

RADIUS = 4  # a 9×9 grid: 81 shifts


class ChannelsLast(nn.Module):
    """ART's translation grid is right only for N×H×W×C arrays; the model takes N×C×H×W."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.permute(0, 3, 1, 2))


def art_sweep(model: nn.Module, floats: np.ndarray) -> float:
    """ART's grid search over the same 81 translations; returns its fooling rate."""
    from art.attacks.evasion import SpatialTransformation
    from art.estimators.classification import PyTorchClassifier

    classifier = PyTorchClassifier(
        model=ChannelsLast(model), loss=nn.CrossEntropyLoss(), input_shape=(28, 28, 1),
        nb_classes=10, clip_values=(0.0, 1.0), preprocessing=(MNIST_MEAN[0], MNIST_STD[0]),
        channels_first=False, device_type="cpu",
    )
    # ART measures translation in percent of the image side: 4 px of 28.
    attack = SpatialTransformation(
        classifier, max_translation=100 * RADIUS / 28, num_translations=2 * RADIUS + 1,
        max_rotation=0.0, num_rotations=1, verbose=False,
    )
    attack.generate(floats[..., None])
    return float(attack.fooling_rate)


def naive_sweep(model: nn.Module, images: np.ndarray, labels: np.ndarray, shifts) -> list[int]:
    """Per shift: scipy-shift each image, normalize, one forward batch; correct counts per shift."""
    floats = images.astype(np.float32) / np.float32(255)
    mean, std = np.float32(MNIST_MEAN[0]), np.float32(MNIST_STD[0])
    correct = []
    with torch.inference_mode():
        for dx, dy in shifts:
            shifted = np.stack([
                ndimage.shift(image, (dy, dx), order=1, mode="grid-constant", cval=0.0)
                for image in floats
            ])
            batch = torch.from_numpy((shifted - mean) / std)[:, None]
            predicted = model(batch).argmax(dim=1).numpy()
            correct.append(int((predicted == labels).sum()))
    return correct


def main(quick: bool = False) -> str:
    use_threads(1)
    count = 100 if quick else 250
    images, labels = mnist(count)
    model = lenet()
    plan = plan_for((28, 28), RADIUS, MNIST_MEAN, MNIST_STD)
    indices = np.arange(count)
    # Our chunk is min(batch, N) samples, so N ≤ batch gives the naive loop's batches exactly.
    batch_size = max(256, count)
    result = {}
    engine = timed(lambda: result.setdefault("tally", run_sweep(
        model, images, labels, indices, plan, batch_size=batch_size)))
    # The runtime a model upload would get: chosen at validation, as in the sandbox.
    spec = {"channels": 1, "height": 28, "width": 28, "mean": list(MNIST_MEAN), "std": list(MNIST_STD)}
    choice, kept = backends.choose("state_dict", model, spec, torch.device("cpu"))
    chosen = timed(lambda: result.setdefault("chosen", run_sweep(
        kept[choice["backend"]], images, labels, indices, plan, batch_size=choice["batch_size"])))
    naive = timed(lambda: result.setdefault("naive", naive_sweep(model, images, labels, plan.grid.shifts)))
    art = timed(lambda: result.setdefault("art", art_sweep(model, images.astype(np.float32) / 255)))
    engine_correct = [row["correct"] for row in shift_rows(result["tally"], plan.grid)]
    equal = "yes" if engine_correct == result["naive"] else "NO"
    chosen_correct = [row["correct"] for row in shift_rows(result["chosen"], plan.grid)]
    rows = [
        ["ShiftScore engine (run_sweep), eager torch, batch 256", engine.wall, engine.cpu, 1.0, 1.0, "—"],
        [f"ShiftScore engine on its validation choice ({choice['backend']}, batch {choice['batch_size']})",
         chosen.wall, chosen.cpu, chosen.wall / engine.wall, chosen.cpu / engine.cpu,
         "yes" if chosen_correct == engine_correct else "NO"],
        ["naive loop (scipy per image, 1 batch per shift)", naive.wall, naive.cpu,
         naive.wall / engine.wall, naive.cpu / engine.cpu, equal],
        ["IBM ART SpatialTransformation", art.wall, art.cpu, art.wall / engine.wall,
         art.cpu / engine.cpu, f"worst-shift fooling rate {result['art']:.3f} (its own metric)"],
    ]
    return table(
        f"Same LeNet, {count} MNIST digits, 9×9 integer grid, zero fill, 1 thread "
        f"(load {load_average()})",
        ["method", "wall s", "CPU s", "× engine (wall)", "× engine (CPU)", "per-shift results = engine"],
        rows,
    )


if __name__ == "__main__":
    main()
