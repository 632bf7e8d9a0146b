"""The translation grid of a sweep (SPEC §1); plain Python so the API can validate grids."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MAX_SHIFTS = 10_000
_DECIMALS = 9


class GridError(ValueError):
    """The requested grid cannot be swept; the message says why."""


@dataclass(frozen=True)
class Grid:
    """The grid's shifts ordered by dy then dx, and the step when it is a range grid."""

    shifts: tuple[tuple[float, float], ...]
    step: float | None

    @property
    def size(self) -> int:
        return len(self.shifts)

    @property
    def evaluated_shifts(self) -> list[tuple[float, float]]:
        """The grid's shifts, then the reference (0, 0) when the grid lacks it: every sample's views."""
        shifts = list(self.shifts)
        if (0.0, 0.0) not in self.shifts:
            shifts.append((0.0, 0.0))
        return shifts

    @property
    def images_per_sample(self) -> int:
        """Forward passes per sample: the grid's shifts and the reference."""
        return len(self.evaluated_shifts)

    @property
    def max_abs(self) -> tuple[float, float]:
        """The largest |dx| and |dy| of the grid, the reference (0, 0) included."""
        return (
            max([0.0] + [abs(dx) for dx, _ in self.shifts]),
            max([0.0] + [abs(dy) for _, dy in self.shifts]),
        )

    def neighbour_pairs(self) -> list[tuple[int, int]]:
        """Index pairs of shifts one step apart in exactly one of dx, dy (empty for a list)."""
        if self.step is None:
            return []
        index = {shift: i for i, shift in enumerate(self.shifts)}
        pairs = []
        for i, (dx, dy) in enumerate(self.shifts):
            for neighbour in ((_round(dx + self.step), dy), (dx, _round(dy + self.step))):
                j = index.get(neighbour)
                if j is not None:
                    pairs.append((i, j))
        return pairs

    def to_json(self) -> list[list[float]]:
        return [[plain(dx), plain(dy)] for dx, dy in self.shifts]


def _round(value: float) -> float:
    # Shifts are compared as dictionary keys: round away float noise such as 0.1 + 0.2.
    return round(value, _DECIMALS) + 0.0


def plain(value: float) -> float | int:
    """A coordinate as JSON shows it: 2 rather than 2.0, 0.5 as it is."""
    return int(value) if float(value).is_integer() else value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise GridError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def axis_count(low: float, high: float, step: float, name: str = "axis") -> int:
    """How many values k = 0 … ⌊(high − low)/step + 1e-9⌋ an axis has, counted without building it.

    Raises GridError past MAX_SHIFTS, so a request such as [0, 1e12] costs arithmetic, not a list.
    """
    quotient = (high - low) / step
    # A span of 1e308 (or a step of 1e-308) overflows to inf: refuse it rather than floor() it.
    if not math.isfinite(quotient) or quotient + 1e-9 >= MAX_SHIFTS:
        raise GridError(f"shifts.{name} [{low:g}, {high:g}] in steps of {step:g} has more than {MAX_SHIFTS} "
                        f"values; a grid has at most {MAX_SHIFTS} shifts (narrow the range or use a larger step)")
    return math.floor(quotient + 1e-9) + 1


def _bounds(bounds: Any, name: str) -> tuple[float, float]:
    if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
        raise GridError(f"shifts.{name} must be [min, max]")
    low, high = (_number(v, f"shifts.{name}") for v in bounds)
    if low > high:
        raise GridError(f"shifts.{name}: min {low:g} is greater than max {high:g}")
    return low, high


def build_grid(spec: dict[str, Any]) -> Grid:
    """Turn the request's `shifts` object into a Grid, or raise GridError."""
    if not isinstance(spec, dict):
        raise GridError("shifts must be an object: {dx, dy, step} or {list}")
    if "list" in spec:
        if set(spec) - {"list"}:
            raise GridError("shifts.list cannot be combined with dx, dy or step")
        raw = spec["list"]
        if not isinstance(raw, list) or not raw:
            raise GridError("shifts.list must be a non-empty list of [dx, dy] pairs")
        if len(raw) > MAX_SHIFTS:
            raise GridError(f"the grid has {len(raw)} shifts; at most {MAX_SHIFTS} are allowed")
        shifts = []
        for item in raw:
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                raise GridError(f"shifts.list entries must be [dx, dy] pairs, got {item!r}")
            shifts.append((_round(_number(item[0], "dx")), _round(_number(item[1], "dy"))))
        seen: set[tuple[float, float]] = set()
        repeated = [s for s in shifts if s in seen or seen.add(s)]
        if repeated:
            dx, dy = repeated[0]
            raise GridError(f"shifts.list repeats the pair [{plain(dx)}, {plain(dy)}]")
        return Grid(tuple(sorted(shifts, key=lambda s: (s[1], s[0]))), None)
    unknown = set(spec) - {"dx", "dy", "step"}
    if unknown:
        raise GridError(f"unknown field(s) in shifts: {', '.join(sorted(unknown))}")
    if "dx" not in spec or "dy" not in spec:
        raise GridError("shifts needs dx and dy ranges, e.g. {\"dx\": [-2, 2], \"dy\": [-2, 2], \"step\": 1}")
    step = _number(spec.get("step", 1), "shifts.step")
    if step <= 0:
        raise GridError("shifts.step must be positive")
    (x_low, x_high), (y_low, y_high) = _bounds(spec["dx"], "dx"), _bounds(spec["dy"], "dy")
    x_count, y_count = axis_count(x_low, x_high, step, "dx"), axis_count(y_low, y_high, step, "dy")
    if x_count * y_count > MAX_SHIFTS:
        raise GridError(f"the grid has {x_count * y_count} shifts; at most {MAX_SHIFTS} are allowed "
                        "(narrow the dx/dy ranges or use a larger step)")
    xs = [_round(x_low + k * step) for k in range(x_count)]
    ys = [_round(y_low + k * step) for k in range(y_count)]
    return Grid(tuple((dx, dy) for dy in ys for dx in xs), _round(step))


def check_grid_fits(grid: Grid, padding: str, image_hw: tuple[int, int], input_hw: tuple[int, int]) -> None:
    """Raise GridError if the grid's shifts cannot be applied to images of this size."""
    image_h, image_w = image_hw
    input_h, input_w = input_hw
    if padding == "crop":
        if image_h < input_h or image_w < input_w:
            raise GridError(
                f"padding 'crop' needs images larger than the model input: "
                f"images are {image_h}x{image_w}, the model takes {input_h}x{input_w}"
            )
        top, left = (image_h - input_h) // 2, (image_w - input_w) // 2
        for dx, dy in grid.shifts:
            # The window moves by (-dx, -dy); with fractional shifts it touches floor and ceil.
            if (top - math.ceil(dy) < 0 or top - math.floor(dy) + input_h > image_h
                    or left - math.ceil(dx) < 0 or left - math.floor(dx) + input_w > image_w):
                raise GridError(
                    f"shift ({plain(dx)}, {plain(dy)}) moves the {input_h}x{input_w} crop window "
                    f"outside the {image_h}x{image_w} image; the window can move by "
                    f"{left}..{image_w - input_w - left} in x and {top}..{image_h - input_h - top} in y"
                )
        return
    if (image_h, image_w) != (input_h, input_w):
        raise GridError(
            f"the dataset's images are {image_h}x{image_w} but the model takes "
            f"{input_h}x{input_w}; images are never resized (use padding 'crop' for larger images)"
        )
    max_dx, max_dy = grid.max_abs
    if max_dx >= image_w or max_dy >= image_h:
        raise GridError(
            f"every shift needs |dx| < {image_w} and |dy| < {image_h} (the image size); "
            f"the grid reaches |dx| = {plain(max_dx)}, |dy| = {plain(max_dy)}"
        )
