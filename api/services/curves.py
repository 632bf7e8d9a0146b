"""Line charts of a sweep's marginals: accuracy and agreement against each axis, drawn with Pillow."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image, ImageDraw

from api.services.drawing import AXIS_LABELS, BACKGROUND, INK, MARGIN, MUTED, _font, _hex, _nice, _plain, _text_size

# Accuracy and agreement in viridis's dark blue and green, as the heatmaps colour them.
SERIES = {"accuracy": _hex("#414487"), "agreement": _hex("#22a884")}
PANEL_W, PANEL_H = 300, 200
LEFT, BOTTOM = 44, 40


def _panel(draw: ImageDraw.ImageDraw, x0: int, y0: int, axis: str, points: Sequence[Mapping[str, Any]]) -> None:
    """One axis: its values along x, percent 0–100 up y, one line per metric."""
    tick, label = _font(12), _font(14)
    plot_x, plot_w, plot_h = x0 + LEFT, PANEL_W - LEFT - 10, PANEL_H - BOTTOM
    values = [float(p["value"]) for p in points]
    low, high = min(values), max(values)

    def at(value: float, fraction: float) -> tuple[float, float]:
        x = plot_x + (plot_w / 2 if high == low else plot_w * (value - low) / (high - low))
        return x, y0 + plot_h * (1 - fraction)

    draw.rectangle((plot_x, y0, plot_x + plot_w, y0 + plot_h), outline=MUTED)
    for percent in (0, 25, 50, 75, 100):
        _, y = at(low, percent / 100)
        draw.line((plot_x - 4, y, plot_x, y), fill=MUTED)
        draw.text((plot_x - 6, y), str(percent), font=tick, fill=INK, anchor="rm")
    for value in sorted({low, high, *values[:: max(1, len(values) // 5)]}):
        x, _ = at(value, 0)
        draw.line((x, y0 + plot_h, x, y0 + plot_h + 4), fill=MUTED)
        draw.text((x, y0 + plot_h + 6), _nice(value), font=tick, fill=INK, anchor="mt")
    draw.text((plot_x + plot_w / 2, y0 + plot_h + 22), AXIS_LABELS[axis], font=tick, fill=MUTED, anchor="mt")
    for metric, color in SERIES.items():
        line = [at(float(p["value"]), float(p[metric])) for p in points]
        if len(line) > 1:
            draw.line(line, fill=color, width=2)
        for x, y in line:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=color)
    draw.text((plot_x, y0 - 6), _plain(axis), font=label, fill=INK, anchor="ld")


def curves_png(marginals: Sequence[Mapping[str, Any]], *, title: str, subtitle: str = "") -> bytes:
    """A panel per axis of `marginals` (rows of `axis`, `value`, `accuracy`, `agreement`), in their order."""
    axes: dict[str, list[Mapping[str, Any]]] = {}
    for row in marginals:
        axes.setdefault(row["axis"], []).append(row)
    if not axes:
        raise ValueError("curves need at least one marginal row")
    title_font, sub_font = _font(18), _font(13)
    header = MARGIN + 26 + (20 if subtitle else 0) + 44
    width = max(MARGIN * 2 + PANEL_W * len(axes), MARGIN * 2 + _text_size(title_font, _plain(title))[0],
                MARGIN * 2 + _text_size(sub_font, _plain(subtitle))[0], 360)
    image = Image.new("RGB", (width, header + PANEL_H + MARGIN), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text((MARGIN, MARGIN), _plain(title), font=title_font, fill=INK)
    if subtitle:
        draw.text((MARGIN, MARGIN + 26), _plain(subtitle), font=sub_font, fill=MUTED)
    legend_x = MARGIN
    for metric, color in SERIES.items():
        draw.rectangle((legend_x, header - 40, legend_x + 12, header - 28), fill=color)
        draw.text((legend_x + 18, header - 34), f"{metric} (%)", font=sub_font, fill=INK, anchor="lm")
        legend_x += 130
    for i, (axis, points) in enumerate(axes.items()):
        _panel(draw, MARGIN + i * PANEL_W, header + 8, axis, points)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
