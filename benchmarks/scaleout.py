"""One large sweep on 1 worker process, then on 2 (1 torch thread each): the speed-up, results identical.

`python -m benchmarks.scaleout` — the real stack (gunicorn API, Celery workers, PostgreSQL,
Redis). The sweep is split into chunks (SHIFTSCORE_CHUNK_IMAGES, default 20,000 images,
a power-of-two count) that any worker runs; the last chunk to finish merges the tallies.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import MNIST_MEAN, MNIST_STD, lenet, load_average, mnist, table, use_threads
from benchmarks.stack import real_stack, tree_cpu_seconds

TERMINAL = {"succeeded", "failed", "cancelled"}


def sweep(stack, session, body: dict) -> tuple[float, dict, list[int]]:
    """POST → succeeded seconds, the results a user reads, and the progress seen on the way."""
    began = time.perf_counter()
    created = session.post("/v1/evaluations", json=body)
    assert created.status_code == 202, created.text
    evaluation_id = created.json()["id"]
    progress: list[int] = []
    while True:
        evaluation = session.get(f"/v1/evaluations/{evaluation_id}").json()
        progress.append(evaluation["progress"]["done"])
        if evaluation["status"] in TERMINAL:
            break
        # A pipeline's polling rate: faster polling would spend the cores the workers are measured on.
        time.sleep(0.25)
    elapsed = time.perf_counter() - began
    assert evaluation["status"] == "succeeded", evaluation
    assert progress == sorted(progress), "progress went backwards"
    assert progress[-1] == evaluation["progress"]["total"]
    results = {
        "summary": evaluation["summary"],
        "shifts": session.get(f"/v1/evaluations/{evaluation_id}/shifts").json()["items"],
        "classes": session.get(f"/v1/evaluations/{evaluation_id}/classes").json()["items"],
        "examples": session.get(f"/v1/evaluations/{evaluation_id}/examples?limit=100").json()["items"],
    }
    chunks = stack.sql('SELECT count(*), count(DISTINCT worker) FROM evaluation_chunks WHERE evaluation_id = %s',
                       evaluation_id)[0]
    return elapsed, results, list(chunks)


def main(samples: int = 5000, radius: int = 5) -> str:
    use_threads(1)
    with real_stack(workers=1) as stack:
        session = stack.session("bench")
        workdir = Path(stack.env["SHIFTSCORE_HOME"])
        path = workdir / "lenet.pt"
        torch.jit.script(lenet()).save(str(path))
        spec = {"channels": 1, "height": 28, "width": 28, "mean": list(MNIST_MEAN), "std": list(MNIST_STD)}
        model = session.wait_model(session.upload_model(path, spec, name="lenet")["id"], timeout=300)
        assert model["status"] == "ready", model
        images, labels = mnist(samples)
        buffer = io.BytesIO()
        np.savez(buffer, images=images, labels=labels)
        (workdir / "mnist.npz").write_bytes(buffer.getvalue())
        dataset = session.upload_dataset(workdir / "mnist.npz", "mnist")
        body = {"model_id": model["id"], "dataset_id": dataset["id"], "padding": "zeros",
                "shifts": {"dx": [-radius, radius], "dy": [-radius, radius], "step": 1}}
        # A small sweep first, so both runs find the model and data already in the workers' caches.
        sweep(stack, session, {**body, "max_samples": 50})
        one_cpu = [tree_cpu_seconds(w.pid) for w in stack.workers]
        one, one_results, one_chunks = sweep(stack, session, body)
        one_cpu = [tree_cpu_seconds(w.pid) - c for w, c in zip(stack.workers, one_cpu)]
        stack.start_worker()
        sweep(stack, session, {**body, "max_samples": 50, "seed": 1})  # the new worker warms up
        sweep(stack, session, {**body, "max_samples": 50, "seed": 2})
        two_cpu = [tree_cpu_seconds(w.pid) for w in stack.workers]
        two, two_results, two_chunks = sweep(stack, session, body)
        two_cpu = [tree_cpu_seconds(w.pid) - c for w, c in zip(stack.workers, two_cpu)]
    identical = one_results == two_results
    assert identical, "the 2-worker run's results differ from the 1-worker run's"
    images_total = samples * (2 * radius + 1) ** 2
    return table(
        f"Scale-out: one sweep of {samples}×{(2 * radius + 1) ** 2} = {images_total:,} images, LeNet 28×28, "
        f"POST → succeeded; goal ≥ 1.8× (load {load_average()})",
        ["workers × threads", "chunks (distinct workers)", "seconds", "worker CPU s each", "speed-up",
         "results identical"],
        [
            ["1 × 1", f"{one_chunks[0]} ({one_chunks[1]})", one, " + ".join(f"{c:.1f}" for c in one_cpu), 1.0,
             "—"],
            ["2 × 1", f"{two_chunks[0]} ({two_chunks[1]})", two, " + ".join(f"{c:.1f}" for c in two_cpu),
             one / two, identical],
        ],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--radius", type=int, default=5, help="the grid is (2r+1)² integer shifts")
    args = parser.parse_args()
    main(args.samples, args.radius)
