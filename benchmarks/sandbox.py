"""The sandbox's cost: the end-to-end LeNet sweep with models caged (the default) and with SHIFTSCORE_SANDBOX=off.

Both runs use the same stack shape (gunicorn API, one Celery worker with one torch
thread, PostgreSQL, Redis) and the same model, data and grid; each is also set
against the same forward passes alone, measured in this process.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import MNIST_MEAN, MNIST_STD, lenet, load_average, mnist, table, use_threads
from benchmarks.end_to_end import case
from benchmarks.stack import real_stack


def main(quick: bool = False) -> str:
    use_threads(1)
    count, radius = (1000, 4) if quick else (5000, 6)
    images, labels = mnist(count)
    rows = []
    for label, switch in (("caged (default)", "on"), ("SHIFTSCORE_SANDBOX=off", "off")):
        with real_stack(SHIFTSCORE_SANDBOX=switch) as stack:
            session = stack.session("bench")
            row, _ = case(stack, session, "LeNet MNIST", lenet(), images, labels, radius, MNIST_MEAN, MNIST_STD,
                          Path(stack.env["SHIFTSCORE_HOME"]))
            rows.append([label, *row[1:5]])
    overhead = rows[0][3] / rows[1][3]
    rows.append(["caged ÷ off", "", "", "", f"{overhead:.3f}"])
    return table(
        f"Sandbox overhead, POST → succeeded (1 worker × 1 thread); goal caged ÷ off ≤ 1.05 (load {load_average()})",
        ["run", "samples×shifts", "forward s", "POST→succeeded s", "ratio wall"],
        rows,
    )


if __name__ == "__main__":
    main()
