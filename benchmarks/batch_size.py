"""Forward throughput per batch size on one thread: the measurement behind SHIFTSCORE_BATCH_SIZE=256.

A fixed default, not a per-sweep calibration: on CPU some kernels pick their algorithm
by batch size, so a calibrated batch could change a prediction near a tie from one run to
the next; results must not depend on timing.
"""

from __future__ import annotations

import torch

from benchmarks.common import forward_alone, lenet, load_average, resnet_cifar, table, use_threads

SIZES = (16, 64, 128, 256, 512, 1024)


def throughput(model: torch.nn.Module, shape: tuple[int, int, int], batch: int, images: int) -> float:
    batches = [torch.randn(batch, *shape) for _ in range(max(1, images // batch))]
    forward_alone(model, batches[:1])  # warm-up
    return len(batches) * batch / forward_alone(model, batches).wall


def main(quick: bool = False) -> str:
    use_threads(1)
    lenet_images, resnet_images = (4096, 256) if quick else (8192, 768)
    models = [("LeNet 1×28×28", lenet(), (1, 28, 28), lenet_images),
              ("ResNet-18 3×32×32", resnet_cifar(), (3, 32, 32), resnet_images)]
    rows = []
    for name, model, shape, images in models:
        rates = {size: throughput(model, shape, size, max(images, size)) for size in SIZES}
        best = max(rates.values())
        rows.append([name, *(f"{rates[s]:.0f} ({rates[s] / best:.2f})" for s in SIZES)])
    return table(
        f"Images/s per batch size, 1 thread (fraction of the best in brackets; load {load_average()})",
        ["model", *(str(s) for s in SIZES)], rows,
    )


if __name__ == "__main__":
    main()
