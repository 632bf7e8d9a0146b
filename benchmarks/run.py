"""One command for the benchmarks: `python -m benchmarks.run [--quick] [all | NAME ...]`."""

from __future__ import annotations

import argparse
import importlib
import platform
import time

import torch

BENCHMARKS = {
    "engine": "engine vs the same forward passes alone (LeNet, CIFAR ResNet-18)",
    "end_to_end": "POST → succeeded on the real stack vs the forward passes",
    "alternatives": "vs IBM ART SpatialTransformation and a naive scipy loop",
    "memory": "peak RSS for N and 10×N samples",
    "api_latency": "GET /v1/evaluations/{id} p99 at 200 requests/s",
    "batch_size": "forward throughput per batch size (how the default 256 was chosen)",
    "sandbox": "end to end with models caged vs SHIFTSCORE_SANDBOX=off",
    "runtimes": "default settings end to end vs eager TorchScript at default threads; early_exit vs full",
    "backends": "the runtime validation keeps for each registry architecture, and why others are refused",
    "cores": "one sweep on threads vs chunk-parallel processes (the default use of the cores)",
    "big_uploads": "a 1.3 GB NPZ and one 10× smaller: API and worker peak RSS, upload vs cp, sweeps",
    "transforms": "rotation and translation×rotation sweeps vs the forward passes; the Engstrom grid",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", default=["all"], help=f"all or any of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run, not figures")
    args = parser.parse_args(argv)
    names = list(BENCHMARKS) if args.names in ([], ["all"]) else args.names
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    print(f"# ShiftScore benchmarks — {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} default threads, "
          f"CUDA {'yes' if torch.cuda.is_available() else 'no'}")
    for name in names:
        began = time.perf_counter()
        importlib.import_module(f"benchmarks.{name}").main(quick=args.quick)
        print(f"\n(`python -m benchmarks.run {name}` took {time.perf_counter() - began:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
