"""Which device a sweep runs on, from a setting: `auto`, `cpu`, `cuda` or `cuda:N`."""

from __future__ import annotations

import torch


def pick_device(setting: str) -> torch.device:
    """The device the setting asks for; `auto` takes CUDA when there is one."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)
