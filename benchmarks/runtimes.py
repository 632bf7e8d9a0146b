"""The service at its default settings vs the model's own eager forward passes at torch's default threads.

End to end: POST /v1/evaluations → succeeded on the real stack, every SHIFTSCORE_*
setting at its default (the runtime and batch size chosen at validation, the
default threads), against the same images through the eager TorchScript model in
this process at torch's default thread count, timed around the model calls. The
per-shift counts of both must be identical. Then the worst-case gate: `early_exit`
against the full sweep, engine only, on a fragile model (the example digits CNN)
over digits ±3. Last, ONNX Runtime's idle-thread spinning on vs off, through the
engine on every core: the setting behind `onnx_session`'s choice.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import MNIST_MEAN, MNIST_STD, cifar_sized, cpu, interleaved, lenet, load_average, mnist, \
    plan_for, resnet_cifar, spread, table, timed, wall
from benchmarks.end_to_end import CIFAR_MEAN, CIFAR_STD, case, forward_only
from benchmarks.stack import real_stack
from worker.engine.sweep import run_sweep

DEFAULTS = {"SHIFTSCORE_TORCH_THREADS": "", "SHIFTSCORE_BATCH_SIZE": ""}  # and the worker's default concurrency


def _counts(session, evaluation_id: str) -> list[int]:
    rows = session.get(f"/v1/evaluations/{evaluation_id}/shifts", params={"limit": 1000}).json()["items"]
    return [row["correct"] for row in rows]


def end_to_end(stack, session, name, model, images, labels, radius, mean, std, workdir: Path) -> list:
    row, evaluation_id = case(stack, session, name, model, images, labels, radius, mean, std, workdir)
    evaluation = session.get(f"/v1/evaluations/{evaluation_id}").json()
    path = workdir / f"{name.split()[0].lower()}.pt"
    torch.set_num_threads(os.cpu_count() or 1)
    plan = plan_for(images.shape[1:3], radius, mean, std)
    eager = torch.jit.load(str(path)).eval()
    baseline = forward_only(eager, images, labels, plan)
    tally = run_sweep(eager, images, labels, np.arange(len(labels)), plan, batch_size=256)
    same = tally.shift_correct.tolist() == _counts(session, evaluation_id)
    runtime = evaluation["runtime"]
    near_ties = (runtime.get("real_data_check") or {}).get("near_tie_rows")
    candidates = session.get(f"/v1/models/{evaluation['model_id']}").json()["runtime"]["candidates"]
    measured = "; ".join(
        f"{backend} {entry['seconds_per_image'] * 1e6:.0f} µs/img" if entry["kept"] else f"{backend} refused"
        for backend, entry in candidates.items())
    ran = f"{runtime['backend']} @ {runtime['batch_size']}" + ("" if near_ties is None else f", {near_ties} near ties on torch")
    return [name, row[1], ran, measured, baseline.wall, row[3],
            row[3] / baseline.wall, "yes" if same else "NO"]


def early_exit_row() -> list:
    from examples.train_digits_cnn import INPUT, digits_arrays, train
    from worker.engine.early_exit import run_worst_case
    from core.grid import build_grid
    from worker.engine.metrics import summary, worst_case_summary
    from worker.engine.plan import SweepPlan

    torch.set_num_threads(1)
    images, labels = digits_arrays()
    model = train(8, 0).eval()
    grid = build_grid({"dx": [-3, 3], "dy": [-3, 3], "step": 1})
    plan = SweepPlan(grid, "zeros", 0.0, tuple(INPUT["mean"]), tuple(INPUT["std"]), (8, 8))
    rows = np.arange(len(labels))
    began = time.perf_counter()
    full = summary(run_sweep(model, images, labels, rows, plan, batch_size=256), grid)
    full_s = time.perf_counter() - began
    began = time.perf_counter()
    gated = worst_case_summary(run_worst_case(model, images, labels, rows, plan, batch_size=256), grid)
    gated_s = time.perf_counter() - began
    same = gated["worst_case_accuracy"] == full["worst_case_accuracy"]
    return ["early_exit ÷ full sweep, digits CNN, digits ±3", f"{len(labels)}×{plan.grid.images_per_sample}",
            "engine, 1 thread", f"worst case {full['worst_case_accuracy']:.4f}", full_s, gated_s, gated_s / full_s,
            "yes" if same else "NO"]


def spinning_rows(quick: bool) -> list[list]:
    """Engine sweeps on ONNX Runtime at all cores, its worker threads spinning while idle vs sleeping."""
    import onnxruntime

    from worker.model_loading import OnnxModel
    from worker.sandbox import backends

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    images, labels = mnist(300 if quick else 2000)
    plan = plan_for((28, 28), 4, MNIST_MEAN, MNIST_STD)
    spec = {"channels": 1, "height": 28, "width": 28, "mean": list(MNIST_MEAN), "std": list(MNIST_STD)}
    data = backends.onnx_bytes(lenet(), backends.validation_batch(spec, torch.device("cpu")))
    forwards = {}
    for spinning in ("1", "0"):
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        session = onnxruntime.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
        forwards[f"spinning {'on' if spinning == '1' else 'off'}"] = OnnxModel(session, None)
    rows_of = np.arange(len(labels))
    counts: dict[str, list[int]] = {}

    def sweep(name: str):
        def run():
            counts[name] = run_sweep(forwards[name], images, labels, rows_of, plan, batch_size=256).shift_correct.tolist()
        return lambda: timed(run)

    times = interleaved({name: sweep(name) for name in forwards}, 2 if quick else 3)
    same = "yes" if counts["spinning on"] == counts["spinning off"] else "NO"
    base = times["spinning on"]
    return [[f"ONNX Runtime {name}, LeNet, {threads} threads", f"{len(labels)}×{plan.grid.images_per_sample}",
             "engine", f"spread {spread(t) * 100:.0f}%", wall(base), wall(t),
             f"{wall(t) / wall(base):.3f} wall, {cpu(t) / cpu(base):.3f} CPU", same] for name, t in times.items()]


def main(quick: bool = False) -> str:
    rows = []
    # Every setting at its default: empty values are dropped, so the worker reads none.
    with real_stack(concurrency=None, **DEFAULTS) as stack:
        session = stack.session("bench")
        workdir = Path(stack.env["SHIFTSCORE_HOME"])
        count, radius = (1000, 4) if quick else (5000, 6)
        images, labels = mnist(count)
        rows.append(end_to_end(stack, session, "LeNet MNIST", lenet(), images, labels, radius,
                               MNIST_MEAN, MNIST_STD, workdir))
        cifar_images, cifar_labels = cifar_sized(8 if quick else 44)
        rows.append(end_to_end(stack, session, "ResNet-18 CIFAR-size", resnet_cifar(), cifar_images,
                               cifar_labels, 4, CIFAR_MEAN, CIFAR_STD, workdir))
    rows.append(early_exit_row())
    rows.extend(spinning_rows(quick))
    return table(
        f"Default settings, POST → succeeded ÷ eager TorchScript forward passes at {os.cpu_count()} threads "
        f"(goals: LeNet ≤ 0.5, ResNet-18 ≤ 1.0); early_exit ÷ full sweep (load {load_average()})",
        ["case", "samples×shifts", "runtime @ batch", "validation timing", "baseline s", "measured s", "ratio", "counts identical"],
        rows,
    )


if __name__ == "__main__":
    main()
