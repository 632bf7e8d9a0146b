"""Segmentation sweeps (SPEC §3): per-shift equivariance error, pixel agreement and mIoU.

The model returns N×K×h×w logits for H×W inputs, with r = H / h. At a shift s:

- equivariance_error(s) and pixel_agreement(s) compare F(S_s x) with F(x) moved
  by s / r over the cells defined in both (SPEC §3), when r divides dx and dy;
- accuracy(s) and miou(s) compare the predicted classes with the true masks
  shifted the same way as the images (nearest: each output cell stands for its
  r×r block of pixels). Pixels a shift fills without a source (padding `zeros`)
  have no true class and are left out; `circular`, `reflect` and `edge` extend
  the masks as they extend the images, and `crop` moves the window over the
  larger masks. Masks cannot be interpolated, so a fractional shift has no
  accuracy or mIoU. IoU per class is TP / (TP + FP + FN) over all samples, and
  mIoU is its mean over the classes with TP + FP + FN > 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from worker.engine.driver import ChunkViews, Shift, drive
from worker.engine.equivariance import comparable_offset, compared_pair, relative_error, squared_sums
from worker.engine.shifting import canvas_margin, make_canvas
from worker.engine.plan import SweepError, SweepPlan

Predict = Callable[[torch.Tensor], torch.Tensor]
_NO_CLASS = -1.0


@dataclass
class SegmentationTally:
    """Counts and sums per grid shift (S), with per-class counts (S×K) for the IoU."""

    num_shifts: int
    num_classes: int
    n: int = 0
    factor: int | None = None
    clean: dict[str, Any] = field(default_factory=dict)
    pixels: np.ndarray = field(default=None)  # type: ignore[assignment]
    correct: np.ndarray = field(default=None)  # type: ignore[assignment]
    cells: np.ndarray = field(default=None)  # type: ignore[assignment]
    agreed: np.ndarray = field(default=None)  # type: ignore[assignment]
    eq_diff: np.ndarray = field(default=None)  # type: ignore[assignment]
    eq_ref: np.ndarray = field(default=None)  # type: ignore[assignment]
    hits: np.ndarray = field(default=None)  # type: ignore[assignment]
    predicted: np.ndarray = field(default=None)  # type: ignore[assignment]
    truth: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        s, k = self.num_shifts, self.num_classes
        for name in ("pixels", "correct", "cells", "agreed"):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(s, dtype=np.int64))
        for name in ("eq_diff", "eq_ref"):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(s, dtype=np.float64))
        for name in ("hits", "predicted", "truth"):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros((s, k), dtype=np.int64))
        if not self.clean:
            self.clean = {"pixels": 0, "correct": 0, "hits": [0] * k, "predicted": [0] * k, "truth": [0] * k}

    _ARRAYS = ("pixels", "correct", "cells", "agreed", "eq_diff", "eq_ref", "hits", "predicted", "truth")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "num_shifts": self.num_shifts, "num_classes": self.num_classes, "n": self.n,
            "factor": self.factor, "clean": _copied(self.clean),
        }
        out.update({name: getattr(self, name).tolist() for name in self._ARRAYS})
        return out

    def merge(self, other: SegmentationTally) -> None:
        """Add another tally over disjoint samples of the same sweep."""
        self.n += other.n
        self.factor = self.factor or other.factor
        for name in self._ARRAYS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.clean = {
            key: [a + b for a, b in zip(value, other.clean[key])] if isinstance(value, list) else value + other.clean[key]
            for key, value in self.clean.items()
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SegmentationTally:
        floats = {"eq_diff", "eq_ref"}
        arrays = {
            name: np.asarray(data[name], dtype=np.float64 if name in floats else np.int64)
            for name in cls._ARRAYS
        }
        return cls(data["num_shifts"], data["num_classes"], data["n"], data["factor"], _copied(data["clean"]), **arrays)


def _copied(clean: dict[str, Any]) -> dict[str, Any]:
    """The clean counts with lists of their own: a checkpoint must not change as the sweep goes on."""
    return {key: list(value) if isinstance(value, list) else value for key, value in clean.items()}


def _class_counts(predicted: torch.Tensor, truth: torch.Tensor, k: int) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
    """(labelled pixels, correct pixels, hits per class, predicted per class, true per class)."""
    valid = truth >= 0
    p, t = predicted[valid], truth[valid]
    hit = p == t
    return (
        int(valid.sum()), int(hit.sum()),
        torch.bincount(t[hit], minlength=k)[:k].cpu().numpy(),
        torch.bincount(p, minlength=k)[:k].cpu().numpy(),
        torch.bincount(t, minlength=k)[:k].cpu().numpy(),
    )


def _check_output(output: torch.Tensor, rows: int, input_hw: tuple[int, int], num_classes: int) -> int:
    """The output's factor r; a SweepError if the output is not N×K×(H/r)×(W/r) logits."""
    if output.ndim != 4 or output.shape[0] != rows:
        raise SweepError(
            f"the model returned an output of shape {tuple(output.shape)}; a segmentation model must "
            "return N×K×H'×W' logits"
        )
    if output.shape[1] < num_classes:
        raise SweepError(
            f"the model returns {output.shape[1]} class maps but the masks have classes up to {num_classes - 1}"
        )
    height, width = input_hw
    map_h, map_w = output.shape[-2:]
    if height % map_h or width % map_w or height // map_h != width // map_w:
        raise SweepError(
            f"the model's {map_h}x{map_w} output does not divide its {height}x{width} input by one whole factor"
        )
    if not torch.isfinite(output).all():
        raise SweepError("the model's output is not finite (NaN or infinity) for some inputs")
    return height // map_h


def _upsample(classes: torch.Tensor, factor: int) -> torch.Tensor:
    if factor == 1:
        return classes
    return classes.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


class SegmentationCounts:
    """A segmentation sweep's accumulator: each shift's classes against the masks and the reference."""

    def __init__(
        self, plan: SweepPlan, masks: np.ndarray, indices: np.ndarray, tally: SegmentationTally | None
    ) -> None:
        self.plan, self.masks, self.tally = plan, masks, tally
        self.num_labels = int(masks[indices].max()) + 1 if len(indices) else 1
        self.margin = canvas_margin(plan.grid.max_abs)
        self.grid_index = {shift: j for j, shift in enumerate(plan.grid.shifts)}

    def begin(self, views: ChunkViews) -> None:
        plan, device = self.plan, views.raw.pixels.device
        source = torch.from_numpy(np.asarray(self.masks[views.rows], dtype=np.float32)).to(device)[:, None]
        self.mask_canvas = make_canvas(source, plan.padding, _NO_CLASS, self.margin, plan.input_hw)
        self.reference: torch.Tensor | None = None

    def add(self, views: ChunkViews, shifts: Sequence[Shift], output: torch.Tensor) -> None:
        factor = _check_output(output, len(views.rows) * len(shifts), self.plan.input_hw, self.num_labels)
        if self.reference is None:
            self._count_reference(output, factor)
        circular = self.plan.padding == "circular"
        # The reference batch stands for the grid's own (0, 0), when the grid has one.
        for position, shift in enumerate(shifts):
            if shift in self.grid_index:
                part = views.part(output, position)
                j = self.grid_index[shift]
                _accumulate(self.tally, j, shift, self.reference, part, self.mask_canvas, circular)

    def _count_reference(self, reference: torch.Tensor, factor: int) -> None:
        self.reference = reference
        # IoU runs over the model's classes: a class it predicts but no mask holds counts too.
        tally = self.tally = self.tally or SegmentationTally(self.plan.grid.size, int(reference.shape[1]))
        tally.factor = factor
        truth = self.mask_canvas.view(0.0, 0.0)[:, 0].long()
        classes = _upsample(reference.argmax(dim=1), factor)
        pixels, correct, hits, predicted, true = _class_counts(classes, truth, tally.num_classes)
        clean = tally.clean
        clean["pixels"] += pixels
        clean["correct"] += correct
        for key, counts in (("hits", hits), ("predicted", predicted), ("truth", true)):
            clean[key] = [a + int(b) for a, b in zip(clean[key], counts)]

    def end(self, views: ChunkViews) -> None:
        self.tally.n += len(views.rows)


def run_segmentation_sweep(
    predict: Predict,
    images: np.ndarray,
    masks: np.ndarray,
    indices: Sequence[int] | np.ndarray,
    plan: SweepPlan,
    *,
    tally: SegmentationTally | None = None,
    **options: Any,
) -> SegmentationTally:
    """Sweep `indices[start:]` into `tally` and return it; `options` as in worker.engine.driver.drive."""
    indices = np.asarray(indices, dtype=np.int64)
    return drive(predict, SegmentationCounts(plan, masks, indices, tally), images, indices, plan,
                 reference_alone=True, **options)


def _accumulate(
    tally: SegmentationTally,
    j: int,
    shift: tuple[float, float],
    reference: torch.Tensor,
    output: torch.Tensor,
    mask_canvas: Any,
    circular: bool,
) -> None:
    dx, dy = shift
    factor = tally.factor
    classes = output.argmax(dim=1)
    if float(dx).is_integer() and float(dy).is_integer():
        truth = mask_canvas.view(dx, dy)[:, 0].long()
        pixels, correct, hits, predicted, true = _class_counts(_upsample(classes, factor), truth, tally.num_classes)
        tally.pixels[j] += pixels
        tally.correct[j] += correct
        tally.hits[j] += hits
        tally.predicted[j] += predicted
        tally.truth[j] += true
    offset = comparable_offset(dx, dy, factor)
    pair = compared_pair(reference, output, offset, circular) if offset is not None else None
    if pair is None:
        return
    diff, norm = squared_sums(*pair)
    tally.eq_diff[j] += diff
    tally.eq_ref[j] += norm
    expected_classes, got_classes = pair[0].argmax(dim=1), pair[1].argmax(dim=1)
    tally.cells[j] += expected_classes.numel()
    tally.agreed[j] += int((expected_classes == got_classes).sum())


def mean_iou(hits: np.ndarray, predicted: np.ndarray, truth: np.ndarray) -> float | None:
    """Mean of TP / (TP + FP + FN) over the classes with a non-empty union; None if none has one."""
    union = predicted + truth - hits
    present = union > 0
    if not present.any():
        return None
    return float(np.mean(hits[present] / union[present]))


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def segmentation_rows(tally: SegmentationTally, shifts: Sequence[tuple[float, float]]) -> list[dict[str, Any]]:
    """One row per grid shift, in grid order."""
    rows = []
    for j, (dx, dy) in enumerate(shifts):
        pixels, cells = int(tally.pixels[j]), int(tally.cells[j])
        rows.append({
            "dx": dx, "dy": dy, "n": tally.n,
            "pixels": pixels, "correct": int(tally.correct[j]),
            "cells": cells, "agreed": int(tally.agreed[j]),
            "accuracy": int(tally.correct[j]) / pixels if pixels else None,
            "pixel_agreement": int(tally.agreed[j]) / cells if cells else None,
            "equivariance_error": relative_error(float(tally.eq_diff[j]), float(tally.eq_ref[j])) if cells else None,
            "miou": mean_iou(tally.hits[j], tally.predicted[j], tally.truth[j]) if pixels else None,
        })
    return rows


def segmentation_summary(tally: SegmentationTally, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Clean and mean-over-the-grid pixel accuracy and mIoU, mean agreement and equivariance error."""
    if tally.n == 0:
        raise ValueError("no samples were evaluated")
    clean = tally.clean
    miou = [r["miou"] for r in rows]
    return {
        "task": "segmentation",
        "clean_pixel_accuracy": clean["correct"] / clean["pixels"] if clean["pixels"] else None,
        "clean_miou": mean_iou(*(np.asarray(clean[k]) for k in ("hits", "predicted", "truth"))),
        "mean_pixel_accuracy": _mean([r["accuracy"] for r in rows]),
        "mean_miou": _mean(miou),
        "worst_miou": min((m for m in miou if m is not None), default=None),
        "mean_pixel_agreement": _mean([r["pixel_agreement"] for r in rows]),
        "mean_equivariance_error": _mean([r["equivariance_error"] for r in rows]),
        "output_factor": tally.factor,
        "num_samples": tally.n,
        "num_shifts": len(rows),
    }
