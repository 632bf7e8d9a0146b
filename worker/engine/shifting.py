"""Shift whole batches of images (SPEC §1) with tensor indexing, no per-image Python.

A batch is first laid on a *canvas*: the images extended by the padding mode far
enough for every shift of the grid (or, for `crop`, the uncropped images). Each
integer shift is then a slice of the canvas, and a sub-pixel shift the bilinear
mix of the four integer slices around it, which is what
`scipy.ndimage.shift(order=1)` computes for the padding modes SPEC names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from core.views import axis_index


@dataclass(frozen=True)
class Canvas:
    """Images extended for shifting; the unshifted view starts at (top, left)."""

    pixels: torch.Tensor  # B×C×Hc×Wc, float32 in [0, 1]
    top: int
    left: int
    height: int
    width: int

    def integer_view(self, dx: int, dy: int) -> torch.Tensor:
        """The batch moved right by dx and down by dy: out[y, x] = in[y - dy, x - dx]."""
        y0, x0 = self.top - dy, self.left - dx
        return self.pixels[:, :, y0 : y0 + self.height, x0 : x0 + self.width]

    def view(self, dx: float, dy: float) -> torch.Tensor:
        """The batch shifted by (dx, dy); fractional shifts interpolate bilinearly."""
        if float(dx).is_integer() and float(dy).is_integer():
            return self.integer_view(int(dx), int(dy))
        fx, fy = math.floor(dx), math.floor(dy)
        tx, ty = dx - fx, dy - fy
        # Interpolate in float64 and round once, as scipy.ndimage does for float32 input.
        acc = None
        for ox, wx in ((0, 1.0 - tx), (1, tx)):
            for oy, wy in ((0, 1.0 - ty), (1, ty)):
                weight = wx * wy
                if weight == 0.0:
                    continue
                term = self.integer_view(fx + ox, fy + oy).to(torch.float64) * weight
                acc = term if acc is None else acc + term
        assert acc is not None
        return acc.to(torch.float32)


def make_canvas(
    images: torch.Tensor,
    padding: str,
    fill: float,
    margin: tuple[int, int],
    view_hw: tuple[int, int],
) -> Canvas:
    """Lay a B×C×H×W float batch on a canvas wide enough for shifts up to `margin` (x, y)."""
    _, _, height, width = images.shape
    if padding == "crop":
        view_h, view_w = view_hw
        return Canvas(images, (height - view_h) // 2, (width - view_w) // 2, view_h, view_w)
    margin_x, margin_y = margin
    rows = axis_index(height, margin_y, padding)
    cols = axis_index(width, margin_x, padding)
    index_rows = torch.from_numpy(np.maximum(rows, 0)).to(images.device)
    index_cols = torch.from_numpy(np.maximum(cols, 0)).to(images.device)
    pixels = images.index_select(2, index_rows).index_select(3, index_cols)
    if padding == "zeros":
        outside = torch.from_numpy((rows[:, None] < 0) | (cols[None, :] < 0)).to(images.device)
        pixels = pixels.masked_fill(outside, float(np.float32(fill)))
    return Canvas(pixels, margin_y, margin_x, height, width)


def canvas_margin(max_abs: tuple[float, float]) -> tuple[int, int]:
    """Canvas margin (x, y) that covers shifts up to these magnitudes, sub-pixel included."""
    return (math.ceil(max_abs[0]), math.ceil(max_abs[1]))


def to_float(images_uint8: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """uint8 N×H×W×C (or N×H×W) → float32 N×C×H×W in [0, 1]."""
    device = torch.device(device)
    array = np.ascontiguousarray(images_uint8)
    if array.ndim == 3:
        array = array[..., None]
    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        # Pinned memory lets the copy run asynchronously; the bytes are uint8, a quarter of the floats.
        tensor = tensor.pin_memory().to(device, non_blocking=True)
    else:
        tensor = tensor.to(device)
    # Plain NCHW, whatever the stored layout: the model sees the layout a user would feed it.
    return tensor.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format) / 255.0


def normalize(batch: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-channel (x − mean) / std; mean and std are C×1×1 tensors."""
    return (batch - mean) / std


def normalized_canvas(canvas: Canvas, mean: torch.Tensor, std: torch.Tensor) -> Canvas:
    """The canvas normalized once: its integer views equal normalized integer views bit for bit.

    Per-pixel arithmetic commutes with moving pixels, so one pass over the canvas
    replaces one pass per shift. Sub-pixel views must not use it: SPEC §1 interpolates
    before normalizing, and the rounding differs the other way round.
    """
    return replace(canvas, pixels=normalize(canvas.pixels, mean, std))
