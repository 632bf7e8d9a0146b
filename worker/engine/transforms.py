"""Rotation and scale as sampling maps, and brightness, for whole chunks of images at once.

A geometric transform moves every image the same way, so where each output
pixel reads from (four source pixels and their bilinear weights) is computed once
per transform, in float64 with the very operations `scipy.ndimage.affine_transform`
(order 1) performs, and then applied to a chunk with one gather. A pixel that
reads outside the image follows the padding mode; `zeros` reads the fill slot
appended after the image's last pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import special

# A grid of 10,000 transforms of large images does not fit in memory as maps;
# beyond this many bytes a map is rebuilt for each chunk instead of kept.
MAP_CACHE_BYTES = 256 * 1024 * 1024
# Modes whose coordinates scipy brings inside the image before weighing; `zeros` weighs the
# raw coordinate and fills the neighbours outside.
FOLDED = ("circular", "reflect", "edge")


def affine(angle: float, scale: float, dx: float, dy: float, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The matrix A and offset that take an output pixel (row, col) to the input point it reads."""
    height, width = hw
    cos, sin = special.cosdg(angle), special.sindg(angle)
    matrix = (1.0 / scale) * np.array([[cos, sin], [-sin, cos]], dtype=np.float64)
    centre = np.array([(height - 1) / 2, (width - 1) / 2], dtype=np.float64)
    offset = (centre - matrix @ centre) - matrix @ np.array([dy, dx], dtype=np.float64)
    return matrix, offset


def _fold(coordinate: np.ndarray, size: int, padding: str) -> np.ndarray:
    """Bring a coordinate outside the image inside it, as scipy's map_coordinate does per mode."""
    if size <= 1:
        return np.zeros_like(coordinate)
    below, above = coordinate < 0, coordinate > size - 1
    folded = coordinate.copy()
    if padding == "edge":
        folded[below], folded[above] = 0.0, size - 1.0
    elif padding == "circular":
        low, high = coordinate[below], coordinate[above]
        folded[below] = low + size * (np.trunc((-1 - low) / size) + 1)
        folded[above] = high - size * np.trunc(high / size)
    elif padding == "reflect":
        period = 2 * size - 2
        low, high = coordinate[below], coordinate[above]
        low = period * np.trunc(-low / period) + low
        folded[below] = np.where(low <= 1 - size, low + period, -low)
        high = high - period * np.trunc(high / period)
        folded[above] = np.where(high >= size, period - high, high)
    return folded


def _source(index: np.ndarray, size: int, padding: str) -> np.ndarray:
    """The pixel an integer position reads along one axis; -1 for the fill."""
    if padding == "zeros":
        return np.where((index >= 0) & (index < size), index, -1)
    if padding == "circular":
        return np.mod(index, size)
    if padding == "edge" or size <= 1:
        return np.clip(index, 0, size - 1)
    period = 2 * size - 2
    index = np.abs(index) % period
    return np.where(index < size, index, period - index)


def _axis(coordinate: np.ndarray, size: int, padding: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output pixel along one axis: the two source positions, their weights, and 'wholly outside'."""
    if padding in FOLDED:
        coordinate = _fold(coordinate, size, padding)
    start = np.floor(coordinate)
    first = 1.0 - (coordinate - start)
    # scipy makes the weights sum to one by taking the last as 1 minus the others.
    weights = np.stack([first, 1.0 - first])
    positions = start.astype(np.int64)
    sources = np.stack([_source(positions, size, padding), _source(positions + 1, size, padding)])
    outside = (coordinate <= -1.0) | (coordinate >= size) if padding == "zeros" else np.zeros(coordinate.shape, bool)
    return sources, weights, outside


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
    height, width = hw
    matrix, offset = affine(angle, scale, dx, dy, hw)
    rows, cols = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    # The sums in scipy's order: a zero start, each coordinate's term, then the offset. (scipy's
    # wheels may fuse a multiply-add here; docs/decisions.md says what that changes: at most one
    # float32 step at a few pixels.)
    source_rows = ((0.0 + rows * matrix[0, 0]) + cols * matrix[0, 1]) + offset[0]
    source_cols = ((0.0 + rows * matrix[1, 0]) + cols * matrix[1, 1]) + offset[1]
    row_src, row_w, row_out = _axis(source_rows, height, padding)
    col_src, col_w, col_out = _axis(source_cols, width, padding)
    corners = [(r, c) for r in (0, 1) for c in (0, 1)]
    fill_slot = height * width
    index = np.stack([
        np.where((row_src[r] < 0) | (col_src[c] < 0), fill_slot, row_src[r] * width + col_src[c]) for r, c in corners
    ])
    row_weight = np.stack([row_w[r] for r, _ in corners])
    col_weight = np.stack([col_w[c] for _, c in corners])
    # A point wholly outside takes the fill itself, not a mix of fills (scipy's constant border).
    outside = row_out | col_out
    index[:, outside] = fill_slot
    row_weight[:, outside] = col_weight[:, outside] = np.array([[1.0], [0.0], [0.0], [0.0]])
    return SamplingMap(
        torch.from_numpy(index.ravel()).to(device),
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
