"""GET /v1/evaluations/{id} latency under a fixed 200 requests/s on loopback, served by gunicorn.

An open-loop generator: request i is due at t0 + i/rate whatever happened before,
and its latency counts from when it was due, so a slow server cannot hide its
queueing by slowing the client down. Only 127.0.0.1; bounded in count and time.
"""

from __future__ import annotations

import http.client
import threading
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import lenet, load_average, table
from benchmarks.stack import real_stack

RATE = 200.0
SENDERS = 16


def fire(port: int, path: str, token: str, rate: float, total: int, deadline_s: float) -> list:
    """Send `total` GETs at `rate` per second from SENDERS threads; (status, from-due s, service s)."""
    results: list = [None] * total
    start = time.perf_counter() + 0.2
    stop_at = start + deadline_s
    headers = {"Authorization": f"Bearer {token}"}

    def sender(first: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        for i in range(first, total, SENDERS):
            due = start + i / rate
            if due > stop_at:
                return
            time.sleep(max(0.0, due - time.perf_counter()))
            sent = time.perf_counter()
            try:
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                status = 0
            done = time.perf_counter()
            results[i] = (status, done - due, done - sent)
        connection.close()

    threads = [threading.Thread(target=sender, args=(k,), daemon=True) for k in range(SENDERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=deadline_s + 10)
    return [r for r in results if r is not None]


def _an_evaluation(stack, session, workdir: Path) -> str:
    path = workdir / "lenet8.pt"
    torch.jit.script(lenet()).save(str(path))
    spec = {"channels": 1, "height": 8, "width": 8, "mean": [0.5], "std": [0.5]}
    model = session.wait_model(session.upload_model(path, spec)["id"], timeout=120)
    created = session.post("/v1/evaluations", json={
        "model_id": model["id"], "dataset_id": "digits", "shifts": {"dx": [-1, 1], "dy": [-1, 1]},
        "max_samples": 100,
    }).json()
    done = session.wait_evaluation(created["id"], timeout=120)
    assert done["status"] == "succeeded", done
    return created["id"]


def main(quick: bool = False) -> str:
    seconds = 5.0 if quick else 10.0
    total = int(RATE * seconds)
    with real_stack() as stack:
        session = stack.session("bench")
        evaluation_id = _an_evaluation(stack, session, Path(stack.env["SHIFTSCORE_HOME"]))
        token = session.headers["Authorization"].split(" ", 1)[1]
        path = f"/v1/evaluations/{evaluation_id}"
        fire(stack.port, path, token, RATE, 100, 10)  # warm-up: connections, caches
        began = time.perf_counter()
        results = fire(stack.port, path, token, RATE, total, seconds + 5)
        elapsed = time.perf_counter() - began
    ok = [r for r in results if r[0] == 200]
    latency = np.array([r[1] for r in ok]) * 1000
    service = np.array([r[2] for r in ok]) * 1000
    row = [
        len(results), len(results) - len(ok), len(results) / elapsed,
        *(float(np.percentile(latency, q)) for q in (50, 90, 99)), float(latency.max()),
        float(np.percentile(service, 99)),
    ]
    return table(
        f"GET /v1/evaluations/{{id}} at {RATE:.0f} requests/s for {seconds:.0f} s, gunicorn "
        f"(2 workers × 8 threads) on 127.0.0.1; goal p99 < 20 ms (load {load_average()})",
        ["requests", "errors", "achieved req/s", "p50 ms", "p90 ms", "p99 ms", "max ms",
         "p99 service ms"],
        [row],
    )


if __name__ == "__main__":
    main()
