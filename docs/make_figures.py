"""Make the figures of docs/equivariance.md: a max-pool LeNet beside its blur-pool twin on `digits`.

Run from the repository root: `.venv/bin/python docs/make_figures.py`. It trains both
networks for a few seconds (same seed, same data), sweeps them through ShiftScore's
engine, writes PNGs under docs/img/ and prints the markdown tables.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.services.ingest import digits  # noqa: E402
from core.grid import build_grid  # noqa: E402
from worker import architectures  # noqa: E402
from worker.engine.layers import profile_rows, run_layer_profile  # noqa: E402
from worker.engine.metrics import summary  # noqa: E402
from worker.engine.plan import SweepPlan  # noqa: E402
from worker.engine.sweep import run_sweep  # noqa: E402

IMG = ROOT / "docs" / "img"
POOLS = ("max", "blur")
COLOURS = {"max": (214, 96, 77), "blur": (67, 147, 195)}
GRID = {"dx": [-3, 3], "dy": [-3, 3], "step": 1}
HELD_OUT = 297  # the last 297 of the 1,797 digits are never trained on
FRAME = 6  # black pixels around each 8×8 digit: shifts up to 3 never push a stroke out of the image


def train(pool: str, images: np.ndarray, labels: np.ndarray, epochs: int = 30) -> torch.nn.Module:
    """LeNet from the registry, trained with Adam on the first 1,500 digits."""
    torch.manual_seed(0)
    net = architectures.build("lenet", {"pool": pool}, 1)
    x = torch.from_numpy(images).float().permute(0, 3, 1, 2) / 255
    y = torch.from_numpy(labels)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(64):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(x[batch]), y[batch]).backward()
            optimizer.step()
    return net.eval()


def odd(shift: tuple[float, float]) -> bool:
    return bool(shift[0] % 2 or shift[1] % 2)


def mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def layer_table(rows: list[dict], shifts: tuple) -> list[dict]:
    """Per layer: factor, mean equivariance error (comparable shifts ≠ 0), invariance error at even and odd shifts."""
    table = []
    for row in rows:
        moved = [(s, v) for s, v in zip(shifts, row["shifts"]) if s != (0.0, 0.0)]
        table.append({
            "name": row["name"], "kind": row["kind"], "factor": row["factor"],
            "equivariance": mean([v["equivariance_error"] for _, v in moved]),
            "invariance_even": mean([v["invariance_error"] for s, v in moved if not odd(s)]),
            "invariance_odd": mean([v["invariance_error"] for s, v in moved if odd(s)]),
        })
    return table


def font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default()


def bar_chart(tables: dict[str, list[dict]], key: str, title: str, path: Path) -> None:
    """Grouped bars per layer (forward order), one colour per pooling; n/a where not comparable."""
    names = [row["name"] for row in tables["max"]]
    top = max((row[key] or 0.0) for table in tables.values() for row in table) * 1.15 or 1.0
    width, height, left, bottom, head = 120 + 90 * len(names), 440, 70, 70, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    plot_h = height - bottom - head
    draw.text((left, 15), title, fill="black", font=font(18))
    for k in range(6):
        value = top * k / 5
        y = height - bottom - plot_h * k / 5
        draw.line([(left, y), (width - 20, y)], fill=(225, 225, 225))
        draw.text((8, y - 7), f"{value:.2f}", fill="black", font=font(12))
    for i, name in enumerate(names):
        x0 = left + 20 + 90 * i
        for j, pool in enumerate(POOLS):
            value = tables[pool][i][key]
            bx = x0 + 30 * j
            if value is None:
                draw.text((bx + 2, height - bottom - 16), "n/a", fill=(120, 120, 120), font=font(11))
                continue
            y = height - bottom - plot_h * value / top
            draw.rectangle([bx, y, bx + 26, height - bottom], fill=COLOURS[pool])
        draw.text((x0, height - bottom + 8), name, fill="black", font=font(13))
        factor = tables["max"][i]["factor"]
        draw.text((x0, height - bottom + 26), f"r={factor if factor else '-'}", fill=(90, 90, 90), font=font(11))
    for j, pool in enumerate(POOLS):
        x = width - 200 + 95 * j
        draw.rectangle([x, 20, x + 14, 34], fill=COLOURS[pool])
        draw.text((x + 20, 19), f"pool={pool}", fill="black", font=font(13))
    draw.line([(left, height - bottom), (width - 20, height - bottom)], fill="black")
    image.save(path)


def heatmaps(grids: dict[str, np.ndarray], shifts: tuple, title: str, path: Path) -> None:
    """The output's invariance error over the (dx, dy) grid, side by side, white = 0."""
    xs = sorted({dx for dx, _ in shifts})
    ys = sorted({dy for _, dy in shifts})
    cell, pad = 44, 50
    top = max(float(g.max()) for g in grids.values()) or 1.0
    panel = cell * len(xs)
    image = Image.new("RGB", (2 * panel + 3 * pad, panel + 2 * pad + 20), "white")
    draw = ImageDraw.Draw(image)
    draw.text((pad, 8), title, fill="black", font=font(16))
    for p, pool in enumerate(POOLS):
        ox, oy = pad + p * (panel + pad), pad + 10
        draw.text((ox, oy - 22), f"pool={pool}", fill="black", font=font(14))
        for (dx, dy), value in zip(shifts, grids[pool]):
            i, j = xs.index(dx), ys.index(dy)
            shade = int(255 * (1 - value / top))
            colour = (255, shade, shade) if pool == "max" else (shade, shade, 255)
            box = [ox + i * cell, oy + j * cell, ox + (i + 1) * cell - 1, oy + (j + 1) * cell - 1]
            draw.rectangle(box, fill=colour)
            draw.text((box[0] + 6, box[1] + 14), f"{value:.2f}", fill="black", font=font(11))
        draw.text((ox, oy + panel + 4), f"dx {int(xs[0])} … {int(xs[-1])} →, dy ↓", fill=(90, 90, 90), font=font(11))
    image.save(path)


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main() -> None:
    torch.set_num_threads(2)
    data = digits()
    # The built-in digits on a 16×16 black canvas (the digits' own background is black).
    images = np.pad(data.images, ((0, 0), (FRAME, FRAME), (FRAME, FRAME), (0, 0)))
    labels = data.targets
    train_rows = np.arange(len(labels) - HELD_OUT)
    test_rows = np.arange(len(labels) - HELD_OUT, len(labels))
    grid = build_grid(GRID)
    side = 8 + 2 * FRAME
    plan = SweepPlan(grid, "zeros", 0.0, (0.0,), (1.0,), (side, side))
    tables, outputs, summaries = {}, {}, {}
    for pool in POOLS:
        net = train(pool, images[train_rows], labels[train_rows])
        summaries[pool] = summary(run_sweep(net, images, labels, test_rows, plan), grid)
        rows = profile_rows(run_layer_profile(net, images, test_rows, plan), grid.shifts)
        tables[pool] = layer_table(rows, grid.shifts)
        outputs[pool] = np.array([s["invariance_error"] for s in rows[-1]["shifts"]])
    IMG.mkdir(parents=True, exist_ok=True)
    bar_chart(tables, "invariance_odd", "Invariance error per layer, odd shifts (mean over the grid)",
              IMG / "layers_invariance_odd.png")
    bar_chart(tables, "invariance_even", "Invariance error per layer, even shifts (mean over the grid)",
              IMG / "layers_invariance_even.png")
    bar_chart(tables, "equivariance", "Equivariance error per layer (comparable shifts: r divides dx, dy)",
              IMG / "layers_equivariance.png")
    heatmaps(outputs, grid.shifts, "Invariance error of the logits at each shift", IMG / "output_heatmap.png")
    print("| pool | clean accuracy | mean accuracy | worst-case accuracy | consistency | flip rate |")
    print("| --- | --- | --- | --- | --- | --- |")
    for pool in POOLS:
        s = summaries[pool]
        print(f"| {pool} | {s['clean_accuracy']:.3f} | {s['mean_accuracy']:.3f} | {s['worst_case_accuracy']:.3f} "
              f"| {s['consistency']:.3f} | {s['flip_rate']:.3f} |")
    print()
    print("| layer | r | equivariance max | equivariance blur | invariance even max | invariance even blur "
          "| invariance odd max | invariance odd blur |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for a, b in zip(tables["max"], tables["blur"]):
        print(f"| {a['name']} | {a['factor'] or '–'} | {fmt(a['equivariance'])} | {fmt(b['equivariance'])} "
              f"| {fmt(a['invariance_even'])} | {fmt(b['invariance_even'])} "
              f"| {fmt(a['invariance_odd'])} | {fmt(b['invariance_odd'])} |")


if __name__ == "__main__":
    main()
