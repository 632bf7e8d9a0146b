"""Where each output pixel of a rotated or scaled image reads from: numpy alone, for the engine and the API.

A geometric transform moves every image the same way, so where each output
pixel reads from (four source pixels and their bilinear weights) is computed once
per transform, in float64 with the very operations `scipy.ndimage.affine_transform`
(order 1) performs. The engine gathers whole chunks with it on the device
(worker/engine/transforms.py); `apply` here does the same arithmetic for one image,
so the API draws the exact pixels a model saw without torch.
"""

from __future__ import annotations

import numpy as np
from scipy import special

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


def sampling_arrays(angle: float, scale: float, dx: float, dy: float, hw: tuple[int, int],
                    padding: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One transform's map for images of size `hw` under `padding`: source slots, row and column weights.

    The slots are 4·H·W int64 into the H·W pixels plus the fill's slot (H·W), corners
    (r0,c0), (r0,c1), (r1,c0), (r1,c1); the weights are 4×H·W float64.
    """
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
    return index.ravel(), row_weight, col_weight


def apply(pixels: np.ndarray, fill: float, angle: float, scale: float, dx: float, dy: float,
          padding: str) -> np.ndarray:
    """One float32 H×W×C [0, 1] image under a rotation or scale (and shift): float32 H×W×C.

    The engine's arithmetic for one image: the float64 image with its fill slot, each
    corner times its row weight, then its column weight, the four summed one after
    another, one cast to float32 (worker/engine/transforms.apply_map).
    """
    height, width, channels = pixels.shape
    index, row_weight, col_weight = sampling_arrays(angle, scale, dx, dy, (height, width), padding)
    source = np.concatenate([pixels.reshape(height * width, channels).astype(np.float64),
                             np.full((1, channels), float(np.float32(fill)), dtype=np.float64)])
    terms = source[index].reshape(4, height * width, channels)
    terms *= row_weight[:, :, None]
    terms *= col_weight[:, :, None]
    total = terms[0] + terms[1]
    total += terms[2]
    total += terms[3]
    return total.astype(np.float32).reshape(height, width, channels)
