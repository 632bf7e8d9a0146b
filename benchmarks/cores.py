"""Using the cores: one sweep on T threads in one process vs split over P processes of one thread.

The choice behind the default SHIFTSCORE_TORCH_THREADS (threads for one chunk) and
SHIFTSCORE_WORKER_CONCURRENCY (processes, each on its own chunk). Same LeNet, same
images, on torch eager and on ONNX Runtime (the runtime validation picks for it);
wall seconds, interleaved repeats, medians. The per-shift counts of every
arrangement must be identical.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time

import numpy as np

from benchmarks.common import load_average, table

RADIUS = 4
SAMPLES = int(os.environ.get("BENCH_CORES_SAMPLES", "1000"))


def _sweep(args: tuple[str, int, int, int]) -> tuple[float, dict]:
    """Run samples [start, stop) on `threads` threads; return wall seconds and the tally."""
    backend, threads, start, stop = args
    import torch

    from benchmarks.common import lenet, mnist, plan_for
    from worker.engine.sweep import run_sweep
    from worker.sandbox import backends

    torch.set_num_threads(threads)
    model = lenet()
    images, labels = mnist(SAMPLES)
    plan = plan_for((28, 28), RADIUS)
    forward = model
    if backend == "onnxruntime":
        spec = {"channels": 1, "height": 28, "width": 28, "mean": [0.1307], "std": [0.3081]}
        forward = backends.onnx_export(model, backends.validation_batch(spec, torch.device("cpu")), threads)
    began = time.perf_counter()
    tally = run_sweep(forward, images, labels, np.arange(start, stop), plan, batch_size=256)
    return time.perf_counter() - began, tally.to_json()


def _arrangement(pool_size: int, backend: str, threads: int) -> tuple[float, list]:
    """Wall time of the whole sweep split into `pool_size` processes of `threads` threads each."""
    bounds = np.linspace(0, SAMPLES, pool_size + 1).astype(int)
    jobs = [(backend, threads, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
    context = multiprocessing.get_context("spawn")
    with context.Pool(pool_size) as pool:
        # Warm every process (imports, the model, the ONNX export) on a few samples, untimed.
        pool.map(_sweep, [(backend, threads, 0, 8)] * pool_size)
        began = time.perf_counter()
        results = pool.map(_sweep, jobs)
        wall = time.perf_counter() - began
    counts = [sum(r[1]["shift_correct"][i] for r in results) for i in range(len(results[0][1]["shift_correct"]))]
    return wall, counts


def main(quick: bool = False) -> str:
    global SAMPLES
    if quick:
        SAMPLES = 200
        os.environ["BENCH_CORES_SAMPLES"] = "200"  # the spawned processes read it
    cores = os.cpu_count() or 1
    repeats = 1 if quick else 3
    rows = []
    for backend in ("torch", "onnxruntime"):
        arrangements = {"1 process × 1 thread": (1, 1), f"1 process × {cores} threads": (1, cores),
                        f"{cores} processes × 1 thread": (cores, 1)}
        times: dict[str, list[float]] = {name: [] for name in arrangements}
        counts: dict[str, list] = {}
        for _ in range(repeats):
            for name, (processes, threads) in arrangements.items():
                wall, counts[name] = _arrangement(processes, backend, threads)
                times[name].append(wall)
        base = statistics.median(times["1 process × 1 thread"])
        same = len({str(c) for c in counts.values()}) == 1
        for name in arrangements:
            median = statistics.median(times[name])
            rows.append([backend, name, median, base / median, "yes" if same else "NO"])
    return table(
        f"LeNet, {SAMPLES} MNIST × {(2 * RADIUS + 1) ** 2 + 0} shifts, batch 256: threads vs processes "
        f"({cores} cores, median of {repeats}; load {load_average()})",
        ["runtime", "arrangement", "wall s", "speed-up vs 1×1", "counts identical"], rows,
    )


if __name__ == "__main__":
    main()
