"""Equivariance and invariance of feature maps under a shift (SPEC §3), as mergeable sums.

A map F (B×C×h×w) of a model whose input is H×W has the downsampling factor
r = H / h. A shift (dx, dy) of the input is comparable with the map when r
divides both: the map should then move by (dx / r, dy / r). The errors are
relative L2 norms pooled over every sample of a sweep,
sqrt(Σ ‖F(S x) − S F(x)‖²) / sqrt(Σ ‖S F(x)‖²), both sums over the cells
compared, so they are kept as sums and merged across chunks.
"""

from __future__ import annotations

import math
import torch


def downsampling_factor(input_hw: tuple[int, int], map_hw: tuple[int, int]) -> int | None:
    """r = H / h when it is a whole number equal on both axes, else None."""
    (height, width), (map_h, map_w) = input_hw, map_hw
    if map_h < 1 or map_w < 1 or height % map_h or width % map_w:
        return None
    factor = height // map_h
    return factor if factor == width // map_w else None


def comparable_offset(dx: float, dy: float, factor: int | None) -> tuple[int, int] | None:
    """The map's own shift (dx / r, dy / r) when r divides dx and dy, else None."""
    if factor is None:
        return None
    a, b = dx / factor, dy / factor
    if not (float(a).is_integer() and float(b).is_integer()):
        return None
    return int(a), int(b)


def compared_pair(
    reference: torch.Tensor, shifted: torch.Tensor, offset: tuple[int, int], circular: bool
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(S F(x), F(S x)) over the cells defined in both; None when no cell is.

    Circular padding compares every cell (the map wraps as the input did); the
    other modes leave out the filled border of width |dx / r|, |dy / r|.
    """
    a, b = offset
    height, width = reference.shape[-2:]
    if circular:
        return torch.roll(reference, shifts=(b, a), dims=(-2, -1)), shifted
    if abs(a) >= width or abs(b) >= height:
        return None
    rows = slice(max(0, b), height + min(0, b))
    cols = slice(max(0, a), width + min(0, a))
    source_rows = slice(max(0, b) - b, height + min(0, b) - b)
    source_cols = slice(max(0, a) - a, width + min(0, a) - a)
    return reference[..., source_rows, source_cols], shifted[..., rows, cols]


def squared_sums(expected: torch.Tensor, got: torch.Tensor) -> tuple[float, float]:
    """(Σ (got − expected)², Σ expected²) in float64."""
    expected64, got64 = expected.to(torch.float64), got.to(torch.float64)
    return float(((got64 - expected64) ** 2).sum()), float((expected64**2).sum())


def global_average(features: torch.Tensor) -> torch.Tensor:
    """Global average pooling of a B×C×h×w map; any other output is flattened per sample."""
    if features.ndim == 4:
        return features.to(torch.float64).mean(dim=(2, 3))
    return features.reshape(features.shape[0], -1).to(torch.float64)


def relative_error(diff_sq: float, reference_sq: float) -> float | None:
    """sqrt(diff / reference); 0 for an all-zero map that stayed zero, None if it did not."""
    if reference_sq <= 0.0:
        return 0.0 if diff_sq == 0.0 else None
    return math.sqrt(diff_sq / reference_sq)

