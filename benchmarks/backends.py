"""Which runtime validation keeps for each registry architecture, and why the others are refused.

Every architecture of the registry, with each pooling it offers, freshly initialised
from a fixed seed (random weights make near-ties between logits likelier than
trained ones, so this is the harder case for the agreement check), goes through the
very choice a model upload gets in the sandbox: `worker.sandbox.backends.choose` on
the declared input, at torch's thread count here.
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.common import load_average, table, use_threads

CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("lenet", {"pool": "max"}, {"channels": 1, "height": 28, "width": 28, "mean": [0.1307], "std": [0.3081]}),
    ("lenet", {"pool": "avg"}, {"channels": 1, "height": 28, "width": 28}),
    ("lenet", {"pool": "blur"}, {"channels": 1, "height": 28, "width": 28}),
    ("lenet", {"pool": "max"}, {"channels": 1, "height": 8, "width": 8}),
    ("vgg_small", {"pool": "max", "width": 32}, {"channels": 3, "height": 32, "width": 32}),
    ("vgg_small", {"pool": "blur", "width": 32}, {"channels": 3, "height": 32, "width": 32}),
    ("resnet18_cifar", {}, {"channels": 3, "height": 32, "width": 32}),
    ("resnet18_cifar", {"antialias": True}, {"channels": 3, "height": 32, "width": 32}),
    ("circular_invariant", {}, {"channels": 1, "height": 28, "width": 28}),
    # The README's tutorial model, trained (the digits CNN the tests and the quickstart use).
    ("examples/train_digits_cnn.py", {}, {"channels": 1, "height": 8, "width": 8, "mean": [0.5], "std": [0.5]}),
]


def _model(name: str, options: dict[str, Any], spec: dict[str, Any]) -> torch.nn.Module:
    from worker import architectures

    if name == "examples/train_digits_cnn.py":
        from examples.train_digits_cnn import train

        return train(8, 0).eval()
    torch.manual_seed(0)
    return architectures.build(name, options, spec["channels"]).eval()


def _row(name: str, options: dict[str, Any], spec: dict[str, Any], quick: bool) -> list:
    from worker.sandbox import backends

    model = _model(name, options, spec)
    record, _ = backends.choose("state_dict", model, spec, torch.device("cpu"), budget_s=2.0 if quick else 30.0)
    onnx = record["candidates"].get("onnxruntime", {})
    eager = record["candidates"]["torch"]
    speed = (f"{eager['seconds_per_image'] / onnx['seconds_per_image']:.2f}"
             if onnx.get("kept") and "seconds_per_image" in onnx and "seconds_per_image" in eager else "—")
    difference = onnx.get("max_abs_diff")
    return [f"{name} {options or ''}".strip(), f"{spec['channels']}×{spec['height']}×{spec['width']}",
            record["backend"], record["batch_size"], "kept" if onnx.get("kept") else f"refused: {onnx.get('reason')}",
            "—" if difference is None else f"{difference:.2g}", speed]


def main(quick: bool = False) -> str:
    use_threads(1)
    cases = CASES[:2] if quick else CASES
    return table(
        f"Runtime chosen at validation per registry architecture (seeded weights, 1 thread; load {load_average()})",
        ["architecture", "input", "chosen", "batch", "ONNX Runtime", "max |Δ logit|", "eager ÷ ONNX time"],
        [_row(name, options, spec, quick) for name, options, spec in cases],
    )


if __name__ == "__main__":
    main()
