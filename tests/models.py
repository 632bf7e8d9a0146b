"""Small real models for the tests, trained or built in seconds, never downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

DIGITS_INPUT = {"channels": 1, "height": 8, "width": 8, "mean": [0.5], "std": [0.5]}


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The built-in `digits` exactly as SPEC §4 stores it (N×8×8 uint8, labels)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.round(bunch.images * 255 / 16).astype(np.uint8), bunch.target.astype(np.int64)


class DigitsCNN(nn.Module):
    """Conv, max-pool, conv, global pool, linear: accurate on digits yet not shift-invariant."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def trained_digits_cnn(epochs: int = 8, seed: int = 0) -> nn.Module:
    """DigitsCNN trained for a few seconds on the built-in digits (about 97% clean accuracy)."""
    torch.manual_seed(seed)
    images, labels = digits_arrays()
    x = (torch.from_numpy(images).float()[:, None] / 255 - 0.5) / 0.5
    y = torch.from_numpy(labels)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    return model.eval()


def save_torchscript(model: nn.Module, path: Path) -> Path:
    torch.jit.script(model).save(str(path))
    return path


def circular_invariant_cnn(seed: int = 0) -> nn.Module:
    """Stride-1 circular convolutions, global average pooling, linear: exactly shift-invariant."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, padding_mode="circular"), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, padding_mode="circular"), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    ).eval()
