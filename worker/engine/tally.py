"""Counts that the metrics of SPEC §2 are computed from; mergeable across chunks of samples.

A tally holds integers only, so chunks evaluated in any order, on any worker, or
resumed from a checkpoint add up to exactly the same result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.grid import Grid, plain

# The most fragile samples kept per evaluation; the API pages through them.
MAX_EXAMPLES = 1000
# worst_shift is the translation of worst_transform, kept for the clients that read it before the other axes.
EXAMPLE_FIELDS = frozenset({"index", "label", "clean_prediction", "worst_prediction", "worst_shift",
                            "worst_transform", "worst_probability", "flips"})


@dataclass
class ClassCounts:
    """Per true label: samples, clean hits, hits summed over the grid, worst-case hits."""

    n: int = 0
    clean_correct: int = 0
    shift_correct: int = 0
    worst_correct: int = 0


@dataclass
class Tally:
    """Integer counts over the samples seen so far."""

    num_shifts: int
    n: int = 0
    clean_correct: int = 0
    worst_correct: int = 0
    consistency_squares: int = 0
    flip_changes: int = 0
    flip_pairs: int = 0
    shift_correct: np.ndarray = field(default=None)  # type: ignore[assignment]
    shift_agree: np.ndarray = field(default=None)  # type: ignore[assignment]
    classes: dict[int, ClassCounts] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.shift_correct is None:
            self.shift_correct = np.zeros(self.num_shifts, dtype=np.int64)
        if self.shift_agree is None:
            self.shift_agree = np.zeros(self.num_shifts, dtype=np.int64)

    def add(
        self,
        grid: Grid,
        predictions: np.ndarray,
        clean: np.ndarray,
        labels: np.ndarray,
        indices: np.ndarray,
        pairs: np.ndarray,
        true_logprob: np.ndarray,
    ) -> None:
        """Count a chunk: predictions n×S over the grid, clean predictions n, labels n, indices n.

        `true_logprob` (n×S) is the log-probability the model gave each sample's true label
        under each grid shift; it picks the fragile samples' worst shift.
        """
        labels = labels.astype(np.int64)
        correct = predictions == labels[:, None]
        agree = predictions == clean[:, None]
        clean_ok = clean == labels
        worst_ok = correct.all(axis=1) & clean_ok
        self.n += len(labels)
        self.clean_correct += int(clean_ok.sum())
        self.worst_correct += int(worst_ok.sum())
        self.shift_correct += correct.sum(axis=0)
        self.shift_agree += agree.sum(axis=0)
        self.consistency_squares += _sum_of_squared_class_counts(predictions)
        if len(pairs):
            changes = predictions[:, pairs[:, 0]] != predictions[:, pairs[:, 1]]
            self.flip_changes += int(changes.sum())
            self.flip_pairs += changes.size
        per_sample_correct = correct.sum(axis=1)
        for label in np.unique(labels):
            mask = labels == label
            counts = self.classes.setdefault(int(label), ClassCounts())
            counts.n += int(mask.sum())
            counts.clean_correct += int(clean_ok[mask].sum())
            counts.shift_correct += int(per_sample_correct[mask].sum())
            counts.worst_correct += int(worst_ok[mask].sum())
        self._add_examples(grid, predictions, clean, labels, indices, agree, true_logprob)

    def _add_examples(self, grid, predictions, clean, labels, indices, agree, true_logprob) -> None:
        flips = (~agree).sum(axis=1)
        candidates = np.nonzero(flips > 0)[0]
        if not len(candidates):
            return
        # Only the chunk's own top MAX_EXAMPLES can reach the overall top list.
        order = np.lexsort((indices[candidates], -flips[candidates]))[:MAX_EXAMPLES]
        for row in candidates[order]:
            # The least confident transform; np.argmin takes the first of equal minima, in grid order.
            worst = int(np.argmin(true_logprob[row]))
            transform = {axis: plain(value) for axis, value in grid.named(grid.transforms[worst]).items()}
            self.examples.append({
                "index": int(indices[row]),
                "label": int(labels[row]),
                "clean_prediction": int(clean[row]),
                "worst_prediction": int(predictions[row, worst]),
                "worst_shift": [transform["dx"], transform["dy"]],
                "worst_transform": transform,
                "worst_probability": float(np.exp(true_logprob[row, worst])),
                "flips": int(flips[row]),
            })
        self.examples.sort(key=lambda e: (-e["flips"], e["index"]))
        del self.examples[MAX_EXAMPLES:]

    def merge(self, other: "Tally") -> None:
        """Add another tally over disjoint samples of the same sweep."""
        self.n += other.n
        self.clean_correct += other.clean_correct
        self.worst_correct += other.worst_correct
        self.consistency_squares += other.consistency_squares
        self.flip_changes += other.flip_changes
        self.flip_pairs += other.flip_pairs
        self.shift_correct += other.shift_correct
        self.shift_agree += other.shift_agree
        for label, theirs in other.classes.items():
            mine = self.classes.setdefault(label, ClassCounts())
            mine.n += theirs.n
            mine.clean_correct += theirs.clean_correct
            mine.shift_correct += theirs.shift_correct
            mine.worst_correct += theirs.worst_correct
        self.examples = sorted(self.examples + other.examples, key=lambda e: (-e["flips"], e["index"]))
        del self.examples[MAX_EXAMPLES:]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready checkpoint of the counts."""
        return {
            "num_shifts": self.num_shifts,
            "n": self.n,
            "clean_correct": self.clean_correct,
            "worst_correct": self.worst_correct,
            "consistency_squares": self.consistency_squares,
            "flip_changes": self.flip_changes,
            "flip_pairs": self.flip_pairs,
            "shift_correct": self.shift_correct.tolist(),
            "shift_agree": self.shift_agree.tolist(),
            "classes": {str(k): dict(vars(v)) for k, v in self.classes.items()},
            "examples": [dict(e) for e in self.examples],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Tally":
        """Rebuild a tally from `to_json`'s output."""
        return cls(
            num_shifts=data["num_shifts"],
            n=data["n"],
            clean_correct=data["clean_correct"],
            worst_correct=data["worst_correct"],
            consistency_squares=data["consistency_squares"],
            flip_changes=data["flip_changes"],
            flip_pairs=data["flip_pairs"],
            shift_correct=np.asarray(data["shift_correct"], dtype=np.int64),
            shift_agree=np.asarray(data["shift_agree"], dtype=np.int64),
            classes={int(k): ClassCounts(**v) for k, v in data["classes"].items()},
            examples=[dict(e) for e in data["examples"]],
        )


def _sum_of_squared_class_counts(predictions: np.ndarray) -> int:
    """Σ_i Σ_c n_ic² where n_ic counts the grid shifts predicting class c for sample i."""
    rows, _ = predictions.shape
    if rows == 0:
        return 0
    width = int(predictions.max()) + 1
    keys = predictions.astype(np.int64) + width * np.arange(rows, dtype=np.int64)[:, None]
    counts = np.bincount(keys.ravel(), minlength=rows * width)
    return int((counts * counts).sum())
