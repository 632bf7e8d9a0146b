"""One image as the model sees it under a shift or a whole transform, in numpy alone (no torch), for the API's pictures.

The engine shifts whole batches on the device (worker/engine/shifting.py); this is the
same definition for a single image, so the API can show the exact pixels without torch.
Both take the padding modes' source indices from `axis_index`, and rotations and scales
from core/sampling.py.
"""

from __future__ import annotations

import math

import numpy as np

from core import sampling
from core.grid import Transform

_NUMPY_PAD = {"circular": "wrap", "reflect": "reflect", "edge": "edge"}


def axis_index(size: int, margin: int, mode: str) -> np.ndarray:
    """Source index of each canvas position along one axis; -1 marks the fill value."""
    positions = np.arange(size)
    if mode == "zeros":
        return np.pad(positions, margin, mode="constant", constant_values=-1)
    return np.pad(positions, margin, mode=_NUMPY_PAD[mode])


def _canvas(pixels: np.ndarray, padding: str, fill: float, margin: tuple[int, int],
            view_hw: tuple[int, int]) -> tuple[np.ndarray, int, int, int, int]:
    """H×W×C floats extended by the padding mode: (canvas, top, left, view height, view width)."""
    height, width = pixels.shape[:2]
    if padding == "crop":
        view_h, view_w = view_hw
        return pixels, (height - view_h) // 2, (width - view_w) // 2, view_h, view_w
    rows = axis_index(height, margin[1], padding)
    cols = axis_index(width, margin[0], padding)
    canvas = pixels[np.maximum(rows, 0)][:, np.maximum(cols, 0)]
    if padding == "zeros":
        canvas[(rows[:, None] < 0) | (cols[None, :] < 0)] = np.float32(fill)
    return canvas, margin[1], margin[0], height, width


def shifted_view(image: np.ndarray, dx: float, dy: float, padding: str, fill: float,
                 view_hw: tuple[int, int]) -> np.ndarray:
    """uint8 H×W or H×W×C moved right by dx and down by dy: float32 h×w×C in [0, 1], before normalization.

    Integer shifts move pixels exactly; a fractional shift is the bilinear mix of the
    four integer shifts around it, mixed in float64 and rounded once to float32, as the
    engine does. `crop` shows the model-sized window, moved by (-dx, -dy).
    """
    array = np.asarray(image)
    pixels = (array[..., None] if array.ndim == 2 else array).astype(np.float32) / np.float32(255.0)
    canvas, top, left, height, width = _canvas(pixels, padding, fill, (math.ceil(abs(dx)), math.ceil(abs(dy))),
                                               view_hw)

    def integer(sx: int, sy: int) -> np.ndarray:
        y0, x0 = top - sy, left - sx
        return canvas[y0 : y0 + height, x0 : x0 + width]

    if float(dx).is_integer() and float(dy).is_integer():
        return np.ascontiguousarray(integer(int(dx), int(dy)))
    fx, fy = math.floor(dx), math.floor(dy)
    tx, ty = dx - fx, dy - fy
    mixed = np.zeros((height, width, canvas.shape[2]), dtype=np.float64)
    for ox, wx in ((0, 1.0 - tx), (1, tx)):
        for oy, wy in ((0, 1.0 - ty), (1, ty)):
            if wx * wy:
                mixed += integer(fx + ox, fy + oy).astype(np.float64) * (wx * wy)
    return mixed.astype(np.float32)


def transformed_view(image: np.ndarray, transform: Transform, padding: str, fill: float,
                     view_hw: tuple[int, int]) -> np.ndarray:
    """uint8 H×W or H×W×C under a whole transform (dx, dy, angle, scale, brightness), as the engine builds it.

    Without rotation or scale it is the shift's own path (`shifted_view`); otherwise the
    image's sampling map (core/sampling.py). Brightness comes after the geometry, in float32.
    """
    dx, dy, angle, scale, brightness = transform
    if angle == 0 and scale == 1:
        view = shifted_view(image, dx, dy, padding, fill, view_hw)
    else:
        array = np.asarray(image)
        pixels = (array[..., None] if array.ndim == 2 else array).astype(np.float32) / np.float32(255.0)
        view = sampling.apply(pixels, fill, angle, scale, dx, dy, padding)
    if brightness == 0:
        return view
    return np.clip(view + np.float32(brightness), np.float32(0), np.float32(1))


def to_uint8(view: np.ndarray) -> np.ndarray:
    """A [0, 1] view as displayable 0–255 levels, each rounded to the nearest."""
    return np.clip(np.rint(view * 255.0), 0, 255).astype(np.uint8)
