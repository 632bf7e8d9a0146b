"""Peak RSS of a worker's sweep for N and 10×N samples: memory must follow the batch, not N×S.

Each size runs in a fresh process that does what the worker does for a sweep:
`np.load(mmap_mode="r")` on the stored .npy, then `run_sweep` with the worker's batch size.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import MNIST_MEAN, MNIST_STD, lenet, mnist, plan_for, table, use_threads

RADIUS = 1  # 9 shifts
BATCH = 256


def child(images_path: str, labels_path: str) -> None:
    """Run in the fresh process: sweep the memory-mapped dataset, print RSS figures as JSON."""
    import psutil

    from worker.engine.sweep import run_sweep

    use_threads(1)
    model = lenet()
    images = np.load(images_path, mmap_mode="r")
    labels = np.load(labels_path)
    plan = plan_for((28, 28), RADIUS, MNIST_MEAN, MNIST_STD)
    before = psutil.Process().memory_info().rss
    tally = run_sweep(model, images, labels, np.arange(len(labels)), plan, batch_size=BATCH)
    print(json.dumps({"before_sweep": before, "peak": _peak_rss(), "n": tally.n}))


def _peak_rss() -> int:
    """This process's peak RSS in bytes: VmHWM, which exec resets.

    Not getrusage's ru_maxrss: Linux carries it across fork and exec, so a child
    would report the parent's size.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def measure(count: int, workdir: Path) -> dict:
    images, labels = mnist(count)
    images_path, labels_path = workdir / f"images-{count}.npy", workdir / f"labels-{count}.npy"
    np.save(images_path, images)
    np.save(labels_path, labels)
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", "child", str(images_path), str(labels_path)],
        capture_output=True, text=True, check=True, timeout=300,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["n"] == count
    return result


def main(quick: bool = False) -> str:
    small = 1000 if quick else 2000
    shifts = (2 * RADIUS + 1) ** 2
    with tempfile.TemporaryDirectory(prefix="shiftscore-memory-") as tmp:
        results = {count: measure(count, Path(tmp)) for count in (small, 10 * small)}
    mib = 1024 * 1024
    base = results[small]["peak"]
    rows = [
        [f"{count}×{shifts}", r["before_sweep"] / mib, r["peak"] / mib, r["peak"] / base,
         count * 28 * 28 / mib, count * shifts * 28 * 28 * 4 / mib]
        for count, r in results.items()
    ]
    return table(
        f"Peak RSS of a sweep (LeNet, memory-mapped .npy, batch {BATCH}); goal: 10× samples < 1.2× peak",
        ["samples×shifts", "RSS before sweep MiB", "peak RSS MiB", "× smaller peak",
         "mapped .npy MiB (paged in, counted in RSS)", "N×S float32 images would be MiB"],
        rows,
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        child(sys.argv[2], sys.argv[3])
    else:
        main()
