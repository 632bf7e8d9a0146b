"""The grid of a sweep: translations, and rotation, scale and brightness beside them.

Plain Python so the API can validate grids. A grid's rows are *transforms*
`(dx, dy, angle, scale, brightness)`; a translation-only grid's rows are its
shifts with the identity tail.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

MAX_SHIFTS = 10_000
_DECIMALS = 9

Transform = tuple[float, float, float, float, float]
IDENTITY: Transform = (0.0, 0.0, 0.0, 1.0, 0.0)
# The axes beside the translation, in the order they sit in a Transform after dx, dy.
AXES = ("angle", "scale", "brightness")
_POSITION = {"dx": 0, "dy": 1, "angle": 2, "scale": 3, "brightness": 4}
# Each axis's value in the identity transform, by name.
IDENTITY_VALUES = dict(zip(_POSITION, IDENTITY))


def transform_of(values: Mapping[str, float]) -> Transform:
    """A transform from its values by axis name (as `Grid.named` gives them), the absent axes at identity."""
    return tuple(float(values.get(name, identity)) for name, identity in IDENTITY_VALUES.items())  # type: ignore[return-value]


class GridError(ValueError):
    """The requested grid cannot be swept; the message says why."""


@dataclass(frozen=True)
class Axis:
    """One of angle, scale, brightness: its values ascending, and its step when it is a range."""

    name: str
    values: tuple[float, ...]
    step: float | None


@dataclass(frozen=True)
class Grid:
    """The translation grid (shifts by dy then dx, its step for a range), and the other named axes.

    `translated` says whether the request named `shifts` at all (absent means dx = dy = 0).
    """

    shifts: tuple[tuple[float, float], ...]
    step: float | None
    axes: tuple[Axis, ...] = ()
    translated: bool = True

    @cached_property
    def transforms(self) -> tuple[Transform, ...]:
        """Every row: ordered by brightness, scale, angle, dy, then dx (the last varies fastest)."""
        values = {axis.name: axis.values for axis in self.axes}
        return tuple(
            (dx, dy, angle, scale, brightness)
            for brightness in values.get("brightness", (0.0,))
            for scale in values.get("scale", (1.0,))
            for angle in values.get("angle", (0.0,))
            for dx, dy in self.shifts
        )

    @property
    def size(self) -> int:
        return len(self.shifts) * math.prod(len(axis.values) for axis in self.axes)

    @property
    def named_axes(self) -> tuple[str, ...]:
        """The axes the request named, as marginals report them."""
        return (("dx", "dy") if self.translated else ()) + tuple(axis.name for axis in self.axes)

    @property
    def evaluated_transforms(self) -> list[Transform]:
        """The grid's transforms, then the identity (the reference) when the grid lacks it: every sample's views."""
        transforms = list(self.transforms)
        if IDENTITY not in transforms:
            transforms.append(IDENTITY)
        return transforms

    @property
    def images_per_sample(self) -> int:
        """Forward passes per sample: every transform of the grid (all axes) and the reference."""
        return len(self.evaluated_transforms)

    @property
    def max_abs(self) -> tuple[float, float]:
        """The largest |dx| and |dy| of the grid, the reference (0, 0) included."""
        return (
            max([0.0] + [abs(dx) for dx, _ in self.shifts]),
            max([0.0] + [abs(dy) for _, dy in self.shifts]),
        )

    def neighbour_pairs(self) -> list[tuple[int, int]]:
        """Index pairs of transforms one step apart in exactly one range axis (list axes give none)."""
        steps = [(0, self.step), (1, self.step)] if self.step is not None else []
        steps += [(_POSITION[axis.name], axis.step) for axis in self.axes if axis.step is not None]
        if not steps:
            return []
        index = {transform: i for i, transform in enumerate(self.transforms)}
        pairs = []
        for i, transform in enumerate(self.transforms):
            for position, step in steps:
                neighbour = list(transform)
                neighbour[position] = _round(neighbour[position] + step)
                j = index.get(tuple(neighbour))
                if j is not None:
                    pairs.append((i, j))
        return pairs

    def named(self, transform: Transform) -> dict[str, float]:
        """A transform by axis name, as rows and examples show it: dx and dy, and angle, scale and
        brightness when the grid has any axis beyond translation (all three, so columns stay fixed)."""
        dx, dy, angle, scale, brightness = transform
        if not self.axes:
            return {"dx": dx, "dy": dy}
        return {"dx": dx, "dy": dy, "angle": angle, "scale": scale, "brightness": brightness}

    def to_json(self) -> list[list[float]]:
        """The rows as JSON: [dx, dy] pairs for a translation grid, else whole transforms."""
        if not self.axes:
            return [[plain(dx), plain(dy)] for dx, dy in self.shifts]
        return [[plain(value) for value in transform] for transform in self.transforms]


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


def axis_count(low: float, high: float, step: float, name: str = "axis", *, field: str | None = None) -> int:
    """How many values k = 0 … ⌊(high − low)/step + 1e-9⌋ an axis has, counted without building it.

    Raises GridError past MAX_SHIFTS, so a request such as [0, 1e12] costs arithmetic, not a list.
    """
    quotient = (high - low) / step
    # A span of 1e308 (or a step of 1e-308) overflows to inf: refuse it rather than floor() it.
    if not math.isfinite(quotient) or quotient + 1e-9 >= MAX_SHIFTS:
        raise GridError(f"{field or 'shifts.' + name} [{low:g}, {high:g}] in steps of {step:g} has more than {MAX_SHIFTS} "
                        f"values; a grid has at most {MAX_SHIFTS} shifts (narrow the range or use a larger step)")
    return math.floor(quotient + 1e-9) + 1


def _bounds(bounds: Any, name: str, *, field: str | None = None) -> tuple[float, float]:
    field = field or f"shifts.{name}"
    if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
        raise GridError(f"{field} must be [min, max]")
    low, high = (_number(v, field) for v in bounds)
    if low > high:
        raise GridError(f"{field}: min {low:g} is greater than max {high:g}")
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
        geometric = [axis.name for axis in grid.axes if axis.name in ("angle", "scale")]
        if geometric:
            raise GridError(
                f"padding 'crop' takes translations and brightness only, not {' or '.join(geometric)}: "
                "a rotated or scaled window would need pixels from outside the image; choose "
                "zeros, circular, reflect or edge padding"
            )
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


# Each axis's allowed values: (low, high, whether low itself is allowed).
_LIMITS = {"angle": (-360.0, 360.0, True), "scale": (0.0, 10.0, False), "brightness": (-1.0, 1.0, True)}
_AXIS_SHAPES = '{"range": [min, max], "step": s} or {"list": [v, ...]}'


def _check_limits(name: str, values: list[float]) -> None:
    low, high, closed = _LIMITS[name]
    for value in values:
        if value > high or value < low or (value == low and not closed):
            where = f"[{low:g}, {high:g}]" if closed else f"({low:g}, {high:g}]"
            raise GridError(f"{name} {plain(value)} is outside {where}"
                            + (": a scale must be positive" if name == "scale" else ""))


def build_axis(name: str, spec: Any) -> Axis:
    """One of angle, scale, brightness from `{range, step}` or `{list}`, or raise GridError."""
    if not isinstance(spec, dict):
        raise GridError(f"{name} must be an object: {_AXIS_SHAPES}")
    if "list" in spec:
        if set(spec) - {"list"}:
            raise GridError(f"{name}.list cannot be combined with range or step")
        raw = spec["list"]
        if not isinstance(raw, list) or not raw:
            raise GridError(f"{name}.list must be a non-empty list of numbers")
        if len(raw) > MAX_SHIFTS:
            raise GridError(f"{name}.list has {len(raw)} values; a grid has at most {MAX_SHIFTS} transforms")
        values = [_round(_number(v, f"{name}.list entries")) for v in raw]
        seen: set[float] = set()
        repeated = [v for v in values if v in seen or seen.add(v)]
        if repeated:
            raise GridError(f"{name}.list repeats the value {plain(repeated[0])}")
        _check_limits(name, values)
        return Axis(name, tuple(sorted(values)), None)
    unknown = set(spec) - {"range", "step"}
    if unknown or "range" not in spec or "step" not in spec:
        raise GridError(f"{name} needs both range and step (or a list): {_AXIS_SHAPES}")
    step = _number(spec["step"], f"{name}.step")
    if step <= 0:
        raise GridError(f"{name}.step must be positive")
    low, high = _bounds(spec["range"], "range", field=f"{name}.range")
    count = axis_count(low, high, step, field=f"{name}.range")
    values = [_round(low + k * step) for k in range(count)]
    _check_limits(name, values)
    return Axis(name, tuple(values), _round(step))


def build_sweep_grid(request: dict[str, Any]) -> Grid:
    """The whole grid of a request: `shifts` (absent: dx = dy = 0) times the named other axes."""
    named = [name for name in AXES if request.get(name) is not None]
    shifts = request.get("shifts")
    if shifts is None and not named:
        raise GridError("name at least one axis: shifts, angle, scale or brightness")
    base = build_grid(shifts) if shifts is not None else Grid(((0.0, 0.0),), None, translated=False)
    axes = tuple(build_axis(name, request[name]) for name in named)
    total = base.size * math.prod(len(axis.values) for axis in axes)
    if total > MAX_SHIFTS:
        sizes = " × ".join([str(base.size)] * (shifts is not None) + [str(len(axis.values)) for axis in axes])
        raise GridError(f"the grid has {sizes} = {total} transforms; at most {MAX_SHIFTS} are allowed "
                        "(narrow a range or use a larger step)")
    return replace(base, axes=axes)
