"""Rotation and scale as sampling maps, and brightness, for whole chunks of images at once.

A map (core/sampling.py: four source pixels and their bilinear weights per output
pixel, in float64 as `scipy.ndimage.affine_transform` (order 1) computes them) is
built once per transform and applied to a chunk with one gather. A pixel that
reads outside the image follows the padding mode; `zeros` reads the fill slot
appended after the image's last pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from core.sampling import sampling_arrays

# A grid of 10,000 transforms of large images does not fit in memory as maps;
# beyond this many bytes a map is rebuilt for each chunk instead of kept.
MAP_CACHE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class SamplingMap:
    """Where each output pixel reads: 4 source slots (into H·W pixels plus the fill), row and column weights."""

    index: torch.Tensor  # 4·H·W int64, corners (r0,c0), (r0,c1), (r1,c0), (r1,c1)
    row_weight: torch.Tensor  # 4×H·W float64
    col_weight: torch.Tensor  # 4×H·W float64

    @property
    def nbytes(self) -> int:
        return sum(t.element_size() * t.numel() for t in (self.index, self.row_weight, self.col_weight))


def sampling_map(angle: float, scale: float, dx: float, dy: float, hw: tuple[int, int], padding: str,
                 device: torch.device) -> SamplingMap:
    """The map of one transform for images of size `hw` under `padding`."""
    index, row_weight, col_weight = sampling_arrays(angle, scale, dx, dy, hw, padding)
    return SamplingMap(
        torch.from_numpy(index).to(device),
        torch.from_numpy(row_weight).to(device),
        torch.from_numpy(col_weight).to(device),
    )


def with_fill_slot(images: torch.Tensor, fill: float) -> torch.Tensor:
    """B×C×H×W float32 → (H·W + 1)×(B·C) float64, pixel-major, the last row holding the fill.

    Pixel-major, a map's gather copies whole rows (every image's value of one pixel) at once.
    """
    flat = images.reshape(images.shape[0] * images.shape[1], -1).t().to(torch.float64)
    slot = torch.full((1, flat.shape[1]), float(np.float32(fill)), dtype=torch.float64, device=flat.device)
    return torch.cat([flat, slot]).contiguous()


def apply_map(source: torch.Tensor, sampling: SamplingMap, shape: tuple[int, int, int, int]) -> torch.Tensor:
    """The transformed chunk, float32 of `shape` (B, C, H, W), from `with_fill_slot`'s source."""
    pixels = shape[2] * shape[3]
    terms = source.index_select(0, sampling.index).view(4, pixels, source.shape[1])
    # scipy's order of operations: each corner times its row weight, then its column weight, then
    # the four summed one after another (two whole-tensor products, then three adds).
    terms.mul_(sampling.row_weight.unsqueeze(2)).mul_(sampling.col_weight.unsqueeze(2))
    total = terms[0] + terms[1]
    total += terms[2]
    total += terms[3]
    return total.to(torch.float32).t().reshape(shape)


def brighten(batch: torch.Tensor, brightness: float) -> torch.Tensor:
    """x ← min(max(x + float32(brightness), 0), 1) on the [0, 1] float32 image."""
    if brightness == 0:
        return batch
    return (batch + float(np.float32(brightness))).clamp_(0.0, 1.0)


class Sampler:
    """The sampling maps of one sweep, built once and kept while they fit in MAP_CACHE_BYTES."""

    def __init__(self, hw: tuple[int, int], padding: str, device: torch.device) -> None:
        self.hw, self.padding, self.device = hw, padding, device
        self.maps: dict[tuple[float, float, float, float], SamplingMap] = {}
        self.kept = 0

    def map(self, dx: float, dy: float, angle: float, scale: float) -> SamplingMap:
        key = (dx, dy, angle, scale)
        found = self.maps.get(key)
        if found is not None:
            return found
        built = sampling_map(angle, scale, dx, dy, self.hw, self.padding, self.device)
        if self.kept + built.nbytes <= MAP_CACHE_BYTES:
            self.maps[key] = built
            self.kept += built.nbytes
        return built
