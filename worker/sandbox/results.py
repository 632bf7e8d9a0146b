"""What the worker accepts back from a sandbox: checked shapes and types, bounded text.

A caged model can put anything in its messages. The tallies it returns are
rebuilt through the engine's own `from_json` only after every field has been
checked here, so a malformed tally fails its evaluation with a clear message
instead of crashing the worker or poisoning the merge of other chunks.
"""

from __future__ import annotations

import math
import re
from typing import Any

from core.runtimes import REAL_DATA_CHECK, REAL_DATA_ROWS
from worker.engine.layers import LAYERS
from worker.engine.tally import EXAMPLE_FIELDS, MAX_EXAMPLES

_REAL_DATA_FIELDS = {"rows", "argmax_equal", "max_abs_diff", "tolerance", "agrees", "near_tie_rows"}

MAX_TEXT = 500
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class BadResult(ValueError):
    """The sandbox returned data that is not a tally of the kind asked for."""


def user_text(text: Any, limit: int = MAX_TEXT) -> str:
    """Text from model code, made safe to show: no control characters, bounded length."""
    cleaned = _CONTROL.sub(" ", str(text)).strip()
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadResult(f"{what} is not a count")
    return value


def _counts(values: Any, length: int, what: str) -> None:
    if not isinstance(values, list) or len(values) != length:
        raise BadResult(f"{what} does not have {length} entries")
    for value in values:
        _count(value, what)


def _reals(values: Any, length: int, what: str) -> None:
    if not isinstance(values, list) or len(values) != length:
        raise BadResult(f"{what} does not have {length} entries")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadResult(f"{what} holds a value that is not a number")


def _probability(value: Any, what: str) -> None:
    # The comparison is False for NaN, so NaN fails too.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise BadResult(f"{what} is not a probability")


def _matrix(values: Any, rows: int, columns: int, what: str, integral: bool) -> None:
    if not isinstance(values, list) or len(values) != rows:
        raise BadResult(f"{what} does not have {rows} rows")
    for row in values:
        (_counts if integral else _reals)(row, columns, what)


def check_classification(data: Any, num_shifts: int, num_samples: int) -> None:
    """A classification Tally's JSON over `num_samples` samples and `num_shifts` grid shifts."""
    if not isinstance(data, dict):
        raise BadResult("the tally is not an object")
    if data.get("num_shifts") != num_shifts:
        raise BadResult("the tally is not over the requested grid")
    n = _count(data.get("n"), "n")
    if n != num_samples:
        raise BadResult(f"the tally counts {n} samples, not {num_samples}")
    for key in ("clean_correct", "worst_correct"):
        if _count(data.get(key), key) > n:
            raise BadResult(f"{key} exceeds the samples")
    for key in ("consistency_squares", "flip_changes", "flip_pairs"):
        _count(data.get(key), key)
    _counts(data.get("shift_correct"), num_shifts, "shift_correct")
    _counts(data.get("shift_agree"), num_shifts, "shift_agree")
    classes = data.get("classes")
    if not isinstance(classes, dict):
        raise BadResult("classes is not an object")
    for label, counts in classes.items():
        if not label.isdigit() or not isinstance(counts, dict):
            raise BadResult("classes holds a bad entry")
        if set(counts) != {"n", "clean_correct", "shift_correct", "worst_correct"}:
            raise BadResult("classes holds a bad entry")
        for key, value in counts.items():
            _count(value, f"classes.{key}")
    _check_examples(data.get("examples"))


def _check_examples(examples: Any) -> None:
    if not isinstance(examples, list) or len(examples) > MAX_EXAMPLES:
        raise BadResult("examples is not a bounded list")
    for example in examples:
        if not isinstance(example, dict):
            raise BadResult("an example is not an object")
        if set(example) != EXAMPLE_FIELDS:
            raise BadResult("an example has unexpected fields")
        for key in ("index", "label", "clean_prediction", "worst_prediction", "flips"):
            _count(example[key], f"examples.{key}")
        _reals(example["worst_shift"], 2, "examples.worst_shift")
        _check_transform(example["worst_transform"], example["worst_shift"])
        _probability(example["worst_probability"], "examples.worst_probability")


# A worst transform's keys: the translation alone, or every axis (Grid.named).
_TRANSFORM_KEYS = ({"dx", "dy"}, {"dx", "dy", "angle", "scale", "brightness"})


def _check_transform(transform: Any, shift: list[Any]) -> None:
    if not isinstance(transform, dict) or set(transform) not in _TRANSFORM_KEYS:
        raise BadResult("examples.worst_transform does not name a transform's axes")
    values = list(transform.values())
    _reals(values, len(values), "examples.worst_transform")
    if not all(math.isfinite(v) for v in values) or [transform["dx"], transform["dy"]] != shift:
        raise BadResult("examples.worst_transform is not finite, or not at worst_shift")


_SEGMENTATION_VECTORS = ("pixels", "correct", "cells", "agreed")
_SEGMENTATION_MATRICES = ("hits", "predicted", "truth")


def check_segmentation(data: Any, num_shifts: int, num_samples: int) -> None:
    """A SegmentationTally's JSON."""
    if not isinstance(data, dict) or data.get("num_shifts") != num_shifts:
        raise BadResult("the tally is not over the requested grid")
    if _count(data.get("n"), "n") != num_samples:
        raise BadResult("the tally does not count the chunk's samples")
    classes = _count(data.get("num_classes"), "num_classes")
    factor = data.get("factor")
    if factor is not None:
        _count(factor, "factor")
    for key in _SEGMENTATION_VECTORS:
        _counts(data.get(key), num_shifts, key)
    for key in ("eq_diff", "eq_ref"):
        _reals(data.get(key), num_shifts, key)
    for key in _SEGMENTATION_MATRICES:
        _matrix(data.get(key), num_shifts, classes, key, integral=True)
    clean = data.get("clean")
    if not isinstance(clean, dict) or set(clean) != {"pixels", "correct", "hits", "predicted", "truth"}:
        raise BadResult("the clean counts are malformed")
    _count(clean["pixels"], "clean.pixels")
    _count(clean["correct"], "clean.correct")
    for key in ("hits", "predicted", "truth"):
        _counts(clean[key], classes, f"clean.{key}")


def check_layers(data: Any, num_shifts: int) -> None:
    """A LayerTally's JSON."""
    if not isinstance(data, dict) or data.get("num_shifts") != num_shifts:
        raise BadResult("the layer profile is not over the requested grid")
    names, kinds = data.get("names"), data.get("kinds")
    if not isinstance(names, list) or not isinstance(kinds, list) or len(names) != len(kinds) or not names:
        raise BadResult("the layer profile names no layers")
    if not all(isinstance(item, str) and len(item) <= 300 for item in names + kinds):
        raise BadResult("the layer profile has bad layer names")
    _count(data.get("n"), "n")
    shapes, factors = data.get("shapes"), data.get("factors")
    if not isinstance(shapes, list) or not all(isinstance(s, list) for s in shapes):
        raise BadResult("the layer shapes are malformed")
    for shape in shapes:
        _counts(shape, len(shape), "shapes")
    if not isinstance(factors, list) or not all(f is None or _count(f, "factors") >= 0 for f in factors):
        raise BadResult("the layer factors are malformed")
    for key in ("eq_diff", "eq_ref", "inv_diff", "inv_ref"):
        _matrix(data.get(key), len(names), num_shifts, key, integral=False)
    _matrix(data.get("eq_cells"), len(names), num_shifts, "eq_cells", integral=True)


def check_real_data(data: Any, num_samples: int, num_shifts: int) -> None:
    """A chunk's real-data check (worker/sandbox/real_data.py): its first samples, at most REAL_DATA_ROWS,
    and the views it re-ran on the model's own runtime (worker/sandbox/near_ties.py)."""
    if not isinstance(data, dict) or set(data) != _REAL_DATA_FIELDS:
        raise BadResult("the real-data check is malformed")
    if _count(data["rows"], "rows") != min(num_samples, REAL_DATA_ROWS):
        raise BadResult("the real-data check is not over the chunk's first samples")
    if _count(data["argmax_equal"], "argmax_equal") > data["rows"]:
        raise BadResult("the real-data check counts more equal rows than it checked")
    for key in ("max_abs_diff", "tolerance"):
        value = data[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0.0 <= value < math.inf):
            raise BadResult(f"the real-data check's {key} is not a finite number")
    if not isinstance(data["agrees"], bool):
        raise BadResult("the real-data check does not say whether it agrees")
    # each sample's views: its clean one and one per shift
    if _count(data["near_tie_rows"], "near_tie_rows") > num_samples * (num_shifts + 1):
        raise BadResult("the real-data check re-ran more views than the chunk has")
    if data["near_tie_rows"] and not data["agrees"]:
        raise BadResult("a chunk that fell back to the model's own runtime re-ran near ties on it")
    if data["agrees"] and (data["argmax_equal"] != data["rows"] or data["max_abs_diff"] is None
                           or data["tolerance"] is None or data["max_abs_diff"] > data["tolerance"]):
        raise BadResult("the real-data check says it agrees against its own figures")


def check_chunk_tally(data: Any, task: str, num_shifts: int, num_samples: int, layers: bool,
                      real_data: bool = False) -> None:
    """The whole of a chunk's result; raises BadResult on the first problem.

    `real_data`: the chunk ran on a runtime other than the model's own, so it carries its real-data check.
    """
    if not isinstance(data, dict):
        raise BadResult("the result is not an object")
    tally = {key: value for key, value in data.items() if key not in (LAYERS, REAL_DATA_CHECK)}
    if task == "segmentation":
        check_segmentation(tally, num_shifts, num_samples)
    else:
        check_classification(tally, num_shifts, num_samples)
    if layers:
        check_layers(data.get(LAYERS), num_shifts)
    elif LAYERS in data:
        raise BadResult("the result holds a layer profile nobody asked for")
    if real_data:
        check_real_data(data.get(REAL_DATA_CHECK), num_samples, num_shifts)
    elif REAL_DATA_CHECK in data:
        raise BadResult("the result holds a real-data check for the model's own runtime")


def check_checkpoint(data: Any, task: str, num_shifts: int, next_start: int, span: int, layers: bool) -> None:
    """A chunk's checkpoint of `span` samples: its sweep's tally over the first `next_start`, and once
    the sweep is done, when a layer profile was asked for (`layers`), the profile so far."""
    profile = data.get(LAYERS) if isinstance(data, dict) else None
    check_chunk_tally(data, task, num_shifts, next_start, layers=layers and profile is not None)
    if profile is not None and (next_start != span or profile["n"] > span):
        raise BadResult("the layer profile is not over samples the sweep has done")
