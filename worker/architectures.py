"""The built-in architectures: torch modules for the registry in architecture_catalog."""

# Every model is an nn.Sequential of named stages, so its named children are in
# forward order (the per-layer profile relies on that). Nothing here runs a
# torch op at import time: a forking Celery parent must stay torch-op-free.

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core import architecture_catalog


class BlurPool2d(nn.Module):
    """A fixed binomial low-pass filter applied with a stride (Zhang 2019, "Making CNNs shift-invariant again")."""

    def __init__(self, size: int = 3, stride: int = 2) -> None:
        super().__init__()
        row = [math.comb(size - 1, k) for k in range(size)]
        kernel = torch.tensor(row, dtype=torch.float32)
        kernel = torch.outer(kernel, kernel)
        # Not persistent: the filter is fixed, so it is not part of a checkpoint.
        self.register_buffer("kernel", (kernel / kernel.sum())[None, None], persistent=False)
        self.size = size
        self.stride = stride
        self.pad = ((size - 1) // 2, size // 2, (size - 1) // 2, size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Blur each channel and subsample."""
        height, width = x.shape[-2:]
        # Reflect like the reference implementation; tiny maps (deep in a net on
        # 8x8 inputs) are smaller than the pad, where only replicate is defined.
        mode = "reflect" if max(self.pad) < min(height, width) else "replicate"
        channels = x.shape[1]
        if torch.jit.is_tracing():
            # A trace (the ONNX export's) fixes the sizes; padding by gathering fixed indices
            # keeps every shape known, which ONNX needs for the kernel and the layers after.
            channels = int(channels)
            x = x.index_select(2, _pad_indices(int(height), self.pad[2], self.pad[3], mode))
            x = x.index_select(3, _pad_indices(int(width), self.pad[0], self.pad[1], mode))
        else:
            x = F.pad(x, self.pad, mode=mode)
        weight = self.kernel.to(x.dtype).expand(channels, 1, self.size, self.size)
        return F.conv2d(x, weight, stride=self.stride, groups=channels)

    def extra_repr(self) -> str:
        return f"size={self.size}, stride={self.stride}"


def _pad_indices(size: int, before: int, after: int, mode: str) -> torch.Tensor:
    """The source index of every position of a padded axis: F.pad's reflect or replicate as a gather."""
    positions = torch.arange(-before, size + after)
    if mode == "reflect":
        positions = positions.abs()
        return torch.where(positions > size - 1, 2 * (size - 1) - positions, positions)
    return positions.clamp(0, size - 1)


def make_pool(kind: str, blur_size: int) -> nn.Module:
    """Return a 2x downsampling layer: max, avg, or Zhang's max-blur-pool."""
    if kind == "max":
        return nn.MaxPool2d(2)
    if kind == "avg":
        return nn.AvgPool2d(2)
    if kind == "blur":
        return nn.Sequential(
            OrderedDict(max=nn.MaxPool2d(kernel_size=2, stride=1), blur=BlurPool2d(blur_size, stride=2))
        )
    raise ValueError(f"unknown pool {kind!r}")


def build_lenet(in_channels: int, num_classes: int, pool: str, blur_size: int) -> nn.Module:
    """Return a LeNet-style conv5-pool-conv5-pool-fc-fc network."""
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),
            relu1=nn.ReLU(),
            pool1=make_pool(pool, blur_size),
            conv2=nn.Conv2d(6, 16, kernel_size=5, padding=2),
            relu2=nn.ReLU(),
            pool2=make_pool(pool, blur_size),
            # A fixed 4x4 grid keeps LeNet's position-dependent fully connected
            # layer (the point of testing it) for any input from 8x8 to 32x32.
            resize=nn.AdaptiveAvgPool2d(4),
            flatten=nn.Flatten(),
            fc1=nn.Linear(16 * 4 * 4, 120),
            relu3=nn.ReLU(),
            fc2=nn.Linear(120, num_classes),
        )
    )


class BasicBlock(nn.Module):
    """A ResNet basic block; with antialias a strided block blurs before subsampling (Zhang 2019)."""

    def __init__(self, in_planes: int, planes: int, stride: int, antialias: bool, blur_size: int) -> None:
        super().__init__()
        blur = antialias and stride != 1
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=1 if blur else stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        # The blur has no parameters, so plain and anti-aliased blocks share state-dict keys.
        self.blur: nn.Module = BlurPool2d(blur_size, stride) if blur else nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            layers: OrderedDict[str, nn.Module] = OrderedDict()
            if blur:
                layers["blur"] = BlurPool2d(blur_size, stride)
            layers["conv"] = nn.Conv2d(in_planes, planes, 1, stride=1 if blur else stride, bias=False)
            layers["bn"] = nn.BatchNorm2d(planes)
            self.shortcut = nn.Sequential(layers)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual: relu(bn2(conv2(blur(relu(bn1(conv1(x)))))) + shortcut(x))."""
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(self.blur(out)))
        return self.relu2(out + self.shortcut(x))


def build_resnet18_cifar(
    in_channels: int, num_classes: int, antialias: bool, blur_size: int, width: int
) -> nn.Module:
    """Return a CIFAR-style ResNet-18: 3x3 stem, four stages of two blocks, global pooling."""
    stages: OrderedDict[str, nn.Module] = OrderedDict(
        stem=nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                bn=nn.BatchNorm2d(width),
                relu=nn.ReLU(),
            )
        )
    )
    in_planes = width
    for index, (multiplier, stride) in enumerate(((1, 1), (2, 2), (4, 2), (8, 2)), start=1):
        planes = width * multiplier
        stages[f"layer{index}"] = nn.Sequential(
            BasicBlock(in_planes, planes, stride, antialias, blur_size),
            BasicBlock(planes, planes, 1, antialias, blur_size),
        )
        in_planes = planes
    stages["pool"] = nn.AdaptiveAvgPool2d(1)
    stages["flatten"] = nn.Flatten()
    stages["fc"] = nn.Linear(in_planes, num_classes)
    return nn.Sequential(stages)


def build_vgg_small(in_channels: int, num_classes: int, pool: str, blur_size: int, width: int) -> nn.Module:
    """Return a small VGG: three conv-bn-relu-conv-bn-relu-pool blocks, global pooling, linear head."""
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    channels = in_channels
    for index, multiplier in enumerate((1, 2, 4), start=1):
        planes = width * multiplier
        stages[f"block{index}"] = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(channels, planes, 3, padding=1),
                bn1=nn.BatchNorm2d(planes),
                relu1=nn.ReLU(),
                conv2=nn.Conv2d(planes, planes, 3, padding=1),
                bn2=nn.BatchNorm2d(planes),
                relu2=nn.ReLU(),
                pool=make_pool(pool, blur_size),
            )
        )
        channels = planes
    stages["pool"] = nn.AdaptiveAvgPool2d(1)
    stages["flatten"] = nn.Flatten()
    stages["fc"] = nn.Linear(channels, num_classes)
    return nn.Sequential(stages)


def build_circular_invariant(in_channels: int, num_classes: int, width: int, depth: int) -> nn.Module:
    """Return stride-1 circular convolutions, global average pooling and a linear head."""
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    channels = in_channels
    for index in range(1, depth + 1):
        stages[f"conv{index}"] = nn.Conv2d(channels, width, 3, padding=1, padding_mode="circular")
        stages[f"relu{index}"] = nn.ReLU()
        channels = width
    stages["pool"] = nn.AdaptiveAvgPool2d(1)
    stages["flatten"] = nn.Flatten()
    stages["fc"] = nn.Linear(channels, num_classes)
    return nn.Sequential(stages)


_BUILDERS = {
    "lenet": build_lenet,
    "resnet18_cifar": build_resnet18_cifar,
    "vgg_small": build_vgg_small,
    "circular_invariant": build_circular_invariant,
}


def build(name: str, options: dict[str, Any], in_channels: int) -> nn.Module:
    """Return a freshly initialised built-in architecture for `in_channels`-channel images."""
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise architecture_catalog.ArchitectureError(f"in_channels must be a positive integer, got {in_channels!r}")
    # Validation is idempotent and cheap; it also fills defaults for callers that skipped it.
    options = architecture_catalog.validate_options(name, options)
    return _BUILDERS[name](in_channels, **options)
