"""Small real models for the tests, trained or built in seconds, never downloaded."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from examples.train_digits_cnn import INPUT, digits_arrays, train  # noqa: F401 — re-exported

DIGITS_INPUT = INPUT


def trained_digits_cnn(epochs: int = 8, seed: int = 0) -> nn.Module:
    """The README's example model: a DigitsCNN trained for a few seconds on the built-in digits."""
    return train(epochs, seed)


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


class MeanClassifier(nn.Module):
    """Two logits from each image's mean: a forward pass that costs next to nothing, at any input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        means = x.mean(dim=(1, 2, 3))
        return torch.stack([means, -means], dim=1)
