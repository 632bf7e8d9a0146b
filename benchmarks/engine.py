"""Engine vs the same forward passes alone, side by side (issue 5: ratio ≤ 1.10).

The forward-only baseline feeds the model exactly the batches the engine feeds it
(captured from one engine run, so the same N×S images, batch size and order),
pre-built as tensors; the engine reads uint8 images, shifts, normalizes, argmaxes
and tallies. Both run interleaved on one thread, the worker's default.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from benchmarks.common import (
    Timing,
    bench_device,
    captured_batches,
    cifar_sized,
    cpu,
    forward_alone,
    interleaved,
    lenet,
    load_average,
    mnist,
    plan_for,
    resnet_cifar,
    spread,
    table,
    timed,
    use_threads,
    wall,
)
from worker.engine.sweep import run_sweep
from worker.engine.tally import Tally


class TimedTally(Tally):
    """A Tally that keeps the seconds spent in `add`, to show its per-chunk cost."""

    seconds: float = 0.0

    def add(self, *args, **kwargs) -> None:  # type: ignore[override]
        began = time.perf_counter()
        super().add(*args, **kwargs)
        self.seconds += time.perf_counter() - began


def case(name: str, model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, radius: int,
         mean, std, batch_size: int, repeats: int) -> list:
    """One table row: forward alone, the engine as run by default and with prefetch, tally's share."""
    plan = plan_for(images.shape[1:3], radius, mean, std)
    indices = np.arange(len(labels))
    device = bench_device()
    model = model.to(device)
    batches = [b.to(device) for b in captured_batches(model, images, labels, plan, batch_size)]
    tallies: dict[str, TimedTally] = {}

    def engine(prefetch: bool) -> Timing:
        tally = TimedTally(num_shifts=plan.grid.size)
        timing = timed(lambda: run_sweep(model, images, labels, indices, plan, batch_size=batch_size,
                                         device=device, tally=tally, prefetch=prefetch))
        tallies[f"prefetch={prefetch}"] = tally
        return timing

    times = interleaved({
        "forward": lambda: forward_alone(model, batches),
        "engine": lambda: engine(device.type == "cuda"),  # run_sweep's default
        "engine_other": lambda: engine(device.type != "cuda"),
    }, repeats)
    identical = tallies["prefetch=True"].to_json() == tallies["prefetch=False"].to_json()
    tally_share = tallies[f"prefetch={device.type == 'cuda'}"].seconds / wall(times["engine"])
    forward = times["forward"]
    return [
        name, f"{len(labels)}×{plan.grid.images_per_sample}", batch_size,
        wall(forward), wall(times["engine"]),
        wall(times["engine"]) / wall(forward), cpu(times["engine"]) / cpu(forward),
        wall(times["engine_other"]) / wall(forward),
        cpu(times["engine_other"]) / cpu(forward),
        f"{tally_share * 100:.2f}%", "yes" if identical else "NO",
        f"{max(spread(v) for v in times.values()) * 100:.0f}%",
    ]


def main(quick: bool = False) -> str:
    use_threads(1)
    repeats = 2 if quick else 3
    # A GPU finishes the CPU's sizes in milliseconds, where timer noise is the figure: it gets
    # 20× the samples and batches of 4,096.
    gpu = bench_device().type == "cuda"
    scale, batch = (20, 4096) if gpu and not quick else (1, 256)
    images, labels = mnist(1000 * scale)
    rows = [case("LeNet 1×28×28", lenet(), images, labels, 4, (0.1307,), (0.3081,), batch, repeats)]
    cifar_images, cifar_labels = cifar_sized(8 * scale)
    rows.append(case("ResNet-18 (CIFAR) 3×32×32", resnet_cifar(), cifar_images, cifar_labels, 4,
                     (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), batch, repeats))
    device = bench_device().type.upper()
    return table(
        f"Engine vs the same forward passes alone ({device}, 1 thread, median of "
        f"{repeats} interleaved runs; goal: ratio ≤ 1.10; load {load_average()})",
        ["model", "samples×shifts", "batch", "forward s", "engine s", "ratio wall", "ratio CPU",
         "other prefetch: wall", "other prefetch: CPU", "tally.add share", "prefetch on/off equal",
         "run spread"],
        rows,
    )


if __name__ == "__main__":
    main()
