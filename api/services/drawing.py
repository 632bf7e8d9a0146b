"""PNG pictures of sweep results, drawn with Pillow from plain per-shift rows (no plotting library)."""

from __future__ import annotations

import bisect
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from core.grid import IDENTITY_VALUES

Row = Mapping[str, Any]
Shift = tuple[float, float]
Color = tuple[int, int, int]

# matplotlib's viridis at 0, 0.1, …, 1: perceptually uniform and readable in grey.
VIRIDIS = ["#440154", "#482475", "#414487", "#355f8d", "#2a788e", "#21918c",
           "#22a884", "#44bf70", "#7ad151", "#bddf26", "#fde725"]
# ColorBrewer RdBu: red where the other evaluation is worse, blue where it is better.
RED_BLUE = ["#b2182b", "#ef8a62", "#fddbc7", "#f7f7f7", "#d1e5f0", "#67a9cf", "#2166ac"]
METRIC_LABELS = {"accuracy": "accuracy", "agreement": "agreement with (0, 0)"}
AXIS_LABELS = {"dx": "dx (px, + moves right)", "dy": "dy (px, + moves down)",
               "angle": "angle (degrees, counter-clockwise)", "scale": "scale (above 1 enlarges)",
               "brightness": "brightness (added to [0, 1] pixels)"}

BACKGROUND: Color = (255, 255, 255)
INK: Color = (33, 37, 41)
MUTED: Color = (108, 117, 125)
MISSING: Color = (233, 236, 239)
MARGIN = 20
GAP = 36
BAR_WIDTH = 18
# Lattice columns (or rows) at most: beyond it, the distinct values; beyond that, bins. Keeps
# every picture within a few thousand pixels whatever the grid (a 10,000-point list included).
MAX_AXIS = 121


def _hex(color: str) -> Color:
    return tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


@dataclass(frozen=True)
class Colormap:
    """Linear interpolation between evenly spaced anchor colours over [low, high]."""

    anchors: tuple[Color, ...]
    low: float
    high: float

    @classmethod
    def of(cls, colors: Sequence[str], low: float, high: float) -> "Colormap":
        return cls(tuple(_hex(c) for c in colors), low, high)

    def __call__(self, value: float) -> Color:
        t = 0.0 if self.high == self.low else (value - self.low) / (self.high - self.low)
        t = min(1.0, max(0.0, t)) * (len(self.anchors) - 1)
        i = min(int(t), len(self.anchors) - 2)
        a, b = np.array(self.anchors[i], float), np.array(self.anchors[i + 1], float)
        return tuple(int(round(v)) for v in a + (b - a) * (t - i))  # type: ignore[return-value]


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow ships a TrueType default font (Aileron); no system fonts are needed.
    return ImageFont.load_default(size=size)


def _text_size(font: Any, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return int(right - left), int(bottom - top)


# Pillow's bundled font has Latin-1 only; dashes and arrows would print as boxes.
_PLAIN = str.maketrans({"\u2014": "-", "\u2013": "-", "\u2212": "-", "\u2192": "->", "\u00d7": "x"})


def _plain(text: str) -> str:
    return text.translate(_PLAIN)


def bar_ticks(low: float, high: float) -> list[float]:
    """Three to six round values from low to high for a colour bar."""
    span = high - low
    for step in (0.005, 0.01, 0.02, 0.025, 0.05, 0.1, 0.2, 0.25, 0.5):
        if span / step <= 5 + 1e-9:
            break
    first = math.ceil(low / step - 1e-9)
    return [round(k * step, 6) for k in range(first, math.floor(high / step + 1e-9) + 1)]


def _fit(font: Any, text: str, width: int) -> str:
    """`text`, shortened with '...' until it is at most `width` pixels wide."""
    if _text_size(font, text)[0] <= width:
        return text
    while text and _text_size(font, text + "...")[0] > width:
        text = text[:-1]
    return text + "..."


def _nice(value: float) -> str:
    """A shift for a tick label: 2, -0.5, 0.25."""
    return f"{value:g}"


def axis_positions(values: Sequence[float]) -> list[float]:
    """The lattice through `values`: min to max in steps of their common spacing (one pixel at most).

    A range grid gives its own axis back; an explicit list gets the gaps between its points
    drawn as empty cells, so the points sit where they are on the dx/dy plane. Spacings too
    fine for a picture fall back to the distinct values in order, and more distinct values than
    MAX_AXIS to evenly spaced bins (`bin_centres`).
    """
    distinct = sorted(set(round(float(v), 6) for v in values))
    if len(distinct) < 2:
        return distinct
    scaled = [round(v * 1_000_000) for v in distinct]
    unit = 1_000_000  # at most one pixel, so integer shifts sit at their true distances
    for a, b in zip(scaled, scaled[1:]):
        unit = math.gcd(unit, b - a)
    count = (scaled[-1] - scaled[0]) // unit + 1
    if count <= MAX_AXIS:
        return [round((scaled[0] + k * unit) / 1_000_000, 6) for k in range(count)]
    if len(distinct) <= MAX_AXIS:
        return distinct
    return bin_centres(distinct[0], distinct[-1])


def _positions(values: Sequence[float], axis: str) -> list[float]:
    """Pixel axes sit at their true distances (`axis_positions`); angle, scale and brightness get a
    column per distinct value, as few as the sweep has (binned past MAX_AXIS)."""
    if axis in ("dx", "dy"):
        return axis_positions(values)
    distinct = sorted(set(round(float(v), 6) for v in values))
    return distinct if len(distinct) <= MAX_AXIS else bin_centres(distinct[0], distinct[-1])


def bin_centres(low: float, high: float) -> list[float]:
    """At most MAX_AXIS centres k·width spanning [low, high], the width a round 1, 2, 2.5 or 5 × 10^n."""
    magnitude = 10.0 ** math.floor(math.log10((high - low) / (MAX_AXIS - 1)))
    for factor in (1, 2, 2.5, 5, 10, 20, 25, 50, 100):
        width = factor * magnitude
        first, last = math.floor(low / width + 0.5), math.floor(high / width + 0.5)
        if last - first + 1 <= MAX_AXIS:
            break
    return [round(k * width, 6) for k in range(first, last + 1)]


def _nearest(positions: Sequence[float], value: float) -> int:
    """Index of the position nearest `value` (positions ascending): its own cell, or its bin."""
    i = bisect.bisect_left(positions, value)
    if i == 0:
        return 0
    if i == len(positions) or value - positions[i - 1] <= positions[i] - value:
        return i - 1
    return i


@dataclass(frozen=True)
class Lattice:
    """Columns (dx) and rows (dy) of the picture; dy grows downwards as in the image."""

    xs: tuple[float, ...]
    ys: tuple[float, ...]
    binned: bool = False  # some cells stand for several shifts (their mean is drawn)

    @classmethod
    def through(cls, shifts: Sequence[Shift], axes: tuple[str, str] = ("dx", "dy")) -> "Lattice":
        xs = tuple(_positions([dx for dx, _ in shifts], axes[0]))
        ys = tuple(_positions([dy for _, dy in shifts], axes[1]))
        on_x, on_y = set(xs), set(ys)
        binned = any(round(dx, 6) not in on_x or round(dy, 6) not in on_y for dx, dy in shifts)
        return cls(xs, ys, binned)

    def cell(self, shift: Shift) -> tuple[int, int]:
        """(column, row) of a shift on the lattice."""
        return _nearest(self.xs, round(shift[0], 6)), _nearest(self.ys, round(shift[1], 6))

    def cell_size(self) -> int:
        return int(min(60, max(3, min(720 // len(self.xs), 560 // len(self.ys)))))

    def means(self, values: Mapping[Shift, float | None]) -> dict[tuple[int, int], float | None]:
        """The value of each cell: its shift's, or the mean of its shifts' when binned (None if none has one)."""
        sums: dict[tuple[int, int], list[float]] = {}
        for shift, value in values.items():
            total = sums.setdefault(self.cell(shift), [0.0, 0])
            if value is not None:
                total[0] += float(value)
                total[1] += 1
        return {key: (total / count if count else None) for key, (total, count) in sums.items()}


@dataclass(frozen=True)
class Panel:
    """One heatmap: a value (or None) per shift, its colours and how a cell prints its value."""

    label: str
    values: Mapping[Shift, float | None]
    colormap: Colormap
    formatter: Callable[[float], str]


def _values(rows: Sequence[Row], metric: str) -> dict[Shift, float | None]:
    return {(round(float(r["dx"]), 6), round(float(r["dy"]), 6)): r.get(metric) for r in rows}


def auto_range(values: Sequence[float], full: bool) -> tuple[float, float]:
    """The colour scale: [0, 1], or the data's range widened to multiples of 0.05."""
    if full or not values:
        return 0.0, 1.0
    low = max(0.0, math.floor(min(values) * 20 + 1e-9) / 20)
    high = min(1.0, math.ceil(max(values) * 20 - 1e-9) / 20)
    if high - low < 0.05:
        low, high = (max(0.0, high - 0.05), high) if high >= 0.05 else (0.0, 0.05)
    return low, high


def diverging_range(values: Sequence[float]) -> float:
    """A symmetric bound for differences, rounded up to 1, 2 or 5 times a power of ten."""
    largest = max([abs(v) for v in values] + [0.0])
    for bound in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0):
        if largest <= bound + 1e-12:
            return bound
    return 1.0


def _percent(value: float) -> str:
    return f"{value * 100:.1f}"


def _points(value: float) -> str:
    return f"{value * 100:+.1f}"


def _percent_tick(value: float) -> str:
    return f"{value * 100:g}"


def _points_tick(value: float) -> str:
    return f"{value * 100:+g}" if value else "0"


class _Figure:
    """Lays out a title, panels sharing one lattice, and colour bars; then draws them."""

    def __init__(self, lattice: Lattice, title: str, subtitle: str, axes: tuple[str, str] = ("dx", "dy")) -> None:
        self.axes = axes
        self.identity = (IDENTITY_VALUES[axes[0]], IDENTITY_VALUES[axes[1]])
        if lattice.binned:
            subtitle = " · ".join(filter(None, [subtitle, "too many shifts for a cell each: a cell is the "
                                                          "mean of the shifts nearest it"]))
        self.lattice, self.title, self.subtitle = lattice, _plain(title), _plain(subtitle)
        self.cell = lattice.cell_size()
        self.title_font, self.sub_font = _font(18), _font(13)
        self.tick_font, self.label_font = _font(12), _font(14)
        self.value_font = _font(int(min(14, max(9, self.cell // 3.6))))
        self.plot_w = self.cell * len(lattice.xs)
        self.plot_h = self.cell * len(lattice.ys)
        self.ytick_w = max(_text_size(self.tick_font, _nice(y))[0] for y in lattice.ys) + 8
        self.left_w = self.ytick_w + 22  # tick labels plus the rotated "dy" title
        self.header_h = MARGIN + 26 + (20 if subtitle else 0) + 8
        self.panel_label_h = 24
        self.bar_h = max(self.plot_h, 150)
        self.footer_h = 44

    def render(self, panels: Sequence[Panel], bars: Sequence[tuple[int, Colormap, str, Callable[[float], str]]]) -> bytes:
        """Draw `panels` left to right; each bar (after panel index, colormap, title, format) follows its panel."""
        bar_block = BAR_WIDTH + 8 + max(_text_size(self.tick_font, "+100.0")[0], 40) + 12
        widths = []
        for i, _ in enumerate(panels):
            widths.append(self.left_w + self.plot_w + GAP + sum(bar_block for b in bars if b[0] == i))
        title_w = max(_text_size(self.title_font, self.title)[0], _text_size(self.sub_font, self.subtitle)[0])
        width = max(MARGIN * 2 + sum(widths) - GAP, MARGIN * 2 + title_w, 320)
        height = self.header_h + self.panel_label_h + max(self.plot_h + self.footer_h, self.bar_h + 12) + MARGIN // 2
        image = Image.new("RGB", (width, height), BACKGROUND)
        draw = ImageDraw.Draw(image)
        draw.text((MARGIN, MARGIN), self.title, font=self.title_font, fill=INK)
        if self.subtitle:
            draw.text((MARGIN, MARGIN + 26), self.subtitle, font=self.sub_font, fill=MUTED)
        x = MARGIN
        top = self.header_h + self.panel_label_h
        for i, panel in enumerate(panels):
            self._panel(image, draw, x, top, panel)
            x += self.left_w + self.plot_w + GAP
            for _, colormap, label, formatter in (b for b in bars if b[0] == i):
                self._bar(draw, x - GAP + 24, top, colormap, label, formatter)
                x += bar_block
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
        return buffer.getvalue()

    def _panel(self, image: Image.Image, draw: ImageDraw.ImageDraw, x: int, top: int, panel: Panel) -> None:
        lattice, cell = self.lattice, self.cell
        plot_x = x + self.left_w
        label = _fit(self.label_font, _plain(panel.label), self.plot_w + GAP - 8)
        draw.text((plot_x, top - 8), label, font=self.label_font, fill=INK, anchor="ld")
        filled = lattice.means(panel.values)
        gap = 1 if cell >= 14 else 0
        for row in range(len(lattice.ys)):
            for col in range(len(lattice.xs)):
                x0, y0 = plot_x + col * cell, top + row * cell
                value = filled.get((col, row), None)
                color = MISSING if value is None else panel.colormap(value)
                draw.rectangle((x0, y0, x0 + cell - 1 - gap, y0 + cell - 1 - gap), fill=color)
                if value is not None:
                    self._cell_text(draw, x0, y0, panel.formatter(value), color)
        if self.identity[0] in lattice.xs and self.identity[1] in lattice.ys and not lattice.binned:
            col, row = lattice.cell(self.identity)
            x0, y0 = plot_x + col * cell, top + row * cell
            # Dark then light, so the outline shows on dark and light cells alike.
            draw.rectangle((x0 - 1, y0 - 1, x0 + cell - gap, y0 + cell - gap), outline=INK, width=2)
            if cell >= 10:
                draw.rectangle((x0 + 1, y0 + 1, x0 + cell - 2 - gap, y0 + cell - 2 - gap), outline=BACKGROUND, width=1)
        self._ticks(image, draw, plot_x, top)

    def _cell_text(self, draw: ImageDraw.ImageDraw, x0: int, y0: int, text: str, color: Color) -> None:
        if self.cell < 26:
            return
        text_w, _ = _text_size(self.value_font, text)
        if text_w > self.cell - 4:
            text = text.split(".")[0]  # drop the decimal before dropping the number
            if _text_size(self.value_font, text)[0] > self.cell - 4:
                return
        luminance = 0.2126 * color[0] + 0.7152 * color[1] + 0.0722 * color[2]
        ink = (255, 255, 255) if luminance < 140 else INK
        centre = (x0 + (self.cell - 1) / 2, y0 + (self.cell - 1) / 2)
        draw.text(centre, text, font=self.value_font, fill=ink, anchor="mm")

    def _every(self, labels: Sequence[str], room: int) -> int:
        """Label every k-th tick so that neighbouring labels never touch."""
        widest = max(_text_size(self.tick_font, text)[0] for text in labels) + 6
        return max(1, math.ceil(widest / max(room, 1)))

    def _ticks(self, image: Image.Image, draw: ImageDraw.ImageDraw, plot_x: int, top: int) -> None:
        lattice, cell = self.lattice, self.cell
        xs = [_nice(v) for v in lattice.xs]
        every = self._every(xs, cell)
        anchor = lattice.xs.index(self.identity[0]) if self.identity[0] in lattice.xs else 0
        bottom = top + self.plot_h
        for col, text in enumerate(xs):
            if (col - anchor) % every == 0:
                cx = plot_x + col * cell + cell / 2
                draw.line((cx, bottom + 1, cx, bottom + 4), fill=MUTED)
                draw.text((cx, bottom + 6), text, font=self.tick_font, fill=INK, anchor="mt")
        draw.text((plot_x + self.plot_w / 2, bottom + 24), AXIS_LABELS[self.axes[0]], font=self.tick_font,
                  fill=MUTED, anchor="mt")
        every = max(1, math.ceil(16 / cell))
        anchor = lattice.ys.index(self.identity[1]) if self.identity[1] in lattice.ys else 0
        for row, value in enumerate(lattice.ys):
            if (row - anchor) % every == 0:
                cy = top + row * cell + cell / 2
                draw.line((plot_x - 4, cy, plot_x - 1, cy), fill=MUTED)
                draw.text((plot_x - 6, cy), _nice(value), font=self.tick_font, fill=INK, anchor="rm")
        label = AXIS_LABELS[self.axes[1]]
        text_w, text_h = _text_size(self.tick_font, label)
        strip = Image.new("RGB", (text_w + 4, text_h + 6), BACKGROUND)
        ImageDraw.Draw(strip).text((2, 1), label, font=self.tick_font, fill=MUTED)
        strip = strip.rotate(90, expand=True)
        y = int(top + self.plot_h / 2 - strip.height / 2)
        image.paste(strip, (plot_x - self.ytick_w - strip.width - 4, max(y, top)))

    def _bar(self, draw: ImageDraw.ImageDraw, x: int, top: int, colormap: Colormap, label: str,
             formatter: Callable[[float], str]) -> None:
        height = self.bar_h
        for i in range(height):
            value = colormap.high - (colormap.high - colormap.low) * i / max(height - 1, 1)
            draw.line((x, top + i, x + BAR_WIDTH - 1, top + i), fill=colormap(value))
        draw.rectangle((x, top, x + BAR_WIDTH - 1, top + height - 1), outline=MUTED)
        draw.text((x, top - 8), label, font=self.tick_font, fill=INK, anchor="ld")
        for value in bar_ticks(colormap.low, colormap.high):
            y = top + (height - 1) * (colormap.high - value) / (colormap.high - colormap.low)
            draw.line((x + BAR_WIDTH, y, x + BAR_WIDTH + 4, y), fill=MUTED)
            draw.text((x + BAR_WIDTH + 7, y), formatter(value), font=self.tick_font, fill=INK, anchor="lm")


def _check_metric(metric: str) -> None:
    if metric not in METRIC_LABELS:
        raise ValueError(f"metric must be one of {', '.join(METRIC_LABELS)}")


def heatmap_png(rows: Sequence[Row], metrics: Sequence[str], *, title: str, subtitle: str = "",
                full_scale: bool = False, axes: tuple[str, str] = ("dx", "dy")) -> bytes:
    """A heatmap per metric (side by side, one shared colour scale) of rows keyed by `dx` and `dy`.

    `axes` names what those two keys stand for (rows of other axes are projected onto them first).
    """
    if not rows:
        raise ValueError("a heatmap needs at least one per-shift row")
    for metric in metrics:
        _check_metric(metric)
    lattice = Lattice.through([(float(r["dx"]), float(r["dy"])) for r in rows], axes)
    present = [float(r[m]) for r in rows for m in metrics if r.get(m) is not None]
    colormap = Colormap.of(VIRIDIS, *auto_range(present, full_scale))
    panels = [Panel(METRIC_LABELS[m], _values(rows, m), colormap, _percent) for m in metrics]
    figure = _Figure(lattice, title, subtitle, axes)
    return figure.render(panels, [(len(panels) - 1, colormap, "percent", _percent_tick)])


def comparison_png(rows: Sequence[Row], other_rows: Sequence[Row], metric: str, *, labels: tuple[str, str],
                   title: str, subtitle: str = "", full_scale: bool = False) -> bytes:
    """Two evaluations side by side on one colour scale, then their difference (other − this)."""
    _check_metric(metric)
    if not rows or not other_rows:
        raise ValueError("a comparison needs per-shift rows for both evaluations")
    this, other = _values(rows, metric), _values(other_rows, metric)
    common = [s for s in this if s in other and this[s] is not None and other[s] is not None]
    if not common:
        raise ValueError("the two evaluations share no shift; compare sweeps over the same grid")
    lattice = Lattice.through(list(this) + [s for s in other if s not in this])
    present = [float(v) for v in [*this.values(), *other.values()] if v is not None]
    colormap = Colormap.of(VIRIDIS, *auto_range(present, full_scale))
    difference = {s: float(other[s]) - float(this[s]) for s in common}  # type: ignore[arg-type]
    bound = diverging_range(list(difference.values()))
    diverging = Colormap.of(RED_BLUE, -bound, bound)
    panels = [
        Panel(labels[0], this, colormap, _percent),
        Panel(labels[1], other, colormap, _percent),
        Panel(f"difference: {labels[1]} - {labels[0]}", difference, diverging, _points),
    ]
    figure = _Figure(lattice, title, subtitle)
    return figure.render(panels, [(1, colormap, "percent", _percent_tick),
                                  (2, diverging, "points", _points_tick)])


def sample_png(image: np.ndarray, scale: int) -> bytes:
    """One dataset image (H×W×C uint8, C = 1 or 3 or 4) as a PNG, enlarged `scale` times with hard pixels."""
    array = np.ascontiguousarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    elif array.ndim == 3 and array.shape[2] not in (3, 4):
        array = array[:, :, :3] if array.shape[2] > 4 else array[:, :, 0]
    picture = Image.fromarray(array)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
