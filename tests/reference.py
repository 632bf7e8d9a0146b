"""An independent reference for SPEC §1–2: one image, one shift, by index arithmetic or scipy."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage, special


def _source(index: int, size: int, mode: str) -> int | None:
    """Where out-of-range pixel `index` reads from along one axis, or None for the fill."""
    if 0 <= index < size:
        return index
    if mode == "zeros":
        return None
    if mode == "circular":
        return index % size
    if mode == "edge":
        return min(max(index, 0), size - 1)
    period = 2 * (size - 1)  # reflect without repeating the edge pixel
    index = abs(index) % period if period else 0
    return index if index < size else period - index


def reference_shift(image: np.ndarray, dx: int, dy: int, mode: str, fill: float) -> np.ndarray:
    """out[c, y, x] = in[c, y − dy, x − dx], else the padding mode's value (C×H×W float)."""
    channels, height, width = image.shape
    out = np.empty_like(image)
    for y in range(height):
        for x in range(width):
            sy, sx = _source(y - dy, height, mode), _source(x - dx, width, mode)
            out[:, y, x] = fill if sy is None or sx is None else image[:, sy, sx]
    return out


def reference_subpixel(image: np.ndarray, dx: float, dy: float, mode: str, fill: float) -> np.ndarray:
    scipy_mode = {"zeros": "grid-constant", "circular": "grid-wrap", "reflect": "mirror", "edge": "nearest"}[mode]
    return np.stack([
        ndimage.shift(channel, (dy, dx), order=1, mode=scipy_mode, cval=fill) for channel in image
    ])


def reference_metrics(P: np.ndarray, clean: np.ndarray, y: np.ndarray, shifts, step):
    """SPEC §2 straight from its formulas, with Python loops."""
    n, s = P.shape
    acc = [sum(P[i, j] == y[i] for i in range(n)) / n for j in range(s)]
    agree = [sum(P[i, j] == clean[i] for i in range(n)) / n for j in range(s)]
    worst = sum(all(P[i, j] == y[i] for j in range(s)) and clean[i] == y[i] for i in range(n)) / n
    consistency = sum(
        sum((list(P[i]).count(c) / s) ** 2 for c in set(P[i])) for i in range(n)
    ) / n
    flips = total = 0
    if step is not None:
        index = {tuple(sh): j for j, sh in enumerate(shifts)}
        for j, (dx, dy) in enumerate(shifts):
            for nb in ((dx + step, dy), (dx, dy + step)):
                if nb in index:
                    k = index[nb]
                    flips += sum(P[i, j] != P[i, k] for i in range(n))
                    total += n
    return {
        "accuracy": acc,
        "agreement": agree,
        "clean_accuracy": float(np.mean(clean == y)),
        "mean_accuracy": float(np.mean(acc)),
        "worst_case_accuracy": worst,
        "consistency": consistency,
        "flip_rate": flips / total if total else None,
    }


def reference_sweep(model, images, labels, grid, mode, fill, mean, std):
    """Shift each image alone with the reference, normalize, predict; then the formulas."""
    def predict(x: np.ndarray) -> int:
        x = (x - np.float32(mean)) / np.float32(std)
        with torch.no_grad():
            return int(model(torch.from_numpy(x[None].astype(np.float32))).argmax(1))

    floats = images.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255)
    P = np.zeros((len(images), grid.size), dtype=np.int64)
    for i, image in enumerate(floats):
        for j, (dx, dy) in enumerate(grid.shifts):
            if float(dx).is_integer() and float(dy).is_integer():
                shifted = reference_shift(image, int(dx), int(dy), mode, np.float32(fill))
            else:
                shifted = reference_subpixel(image, dx, dy, mode, fill).astype(np.float32)
            P[i, j] = predict(shifted)
    clean = np.array([predict(image) for image in floats])
    return P, clean, reference_metrics(P, clean, labels, list(grid.shifts), grid.step)


def reference_crop(image: np.ndarray, dx: float, dy: float, height: int, width: int) -> np.ndarray:
    """SPEC §1 `crop`: the centred height×width window of the content moved by (dx, dy).

    Moving the content and keeping the window still is the window moving by
    (−dx, −dy); scipy's bilinear shift of the whole image gives the fractional case.
    """
    top, left = (image.shape[1] - height) // 2, (image.shape[2] - width) // 2
    if float(dx).is_integer() and float(dy).is_integer():
        y0, x0 = top - int(dy), left - int(dx)
        return image[:, y0 : y0 + height, x0 : x0 + width]
    moved = np.stack([ndimage.shift(channel, (dy, dx), order=1, mode="nearest") for channel in image])
    return moved[:, top : top + height, left : left + width].astype(image.dtype)


SCIPY_MODES = {"zeros": "grid-constant", "circular": "grid-wrap", "reflect": "mirror", "edge": "nearest"}


def reference_transform(image: np.ndarray, transform, mode: str, fill: float) -> np.ndarray:
    """SPEC §1b on one C×H×W float32 image: scipy's affine_transform per channel, then brightness."""
    dx, dy, angle, scale, brightness = transform
    height, width = image.shape[1:]
    c, s = special.cosdg(angle), special.sindg(angle)
    matrix = (1.0 / scale) * np.array([[c, s], [-s, c]])
    centre = np.array([(height - 1) / 2, (width - 1) / 2])
    offset = (centre - matrix @ centre) - matrix @ np.array([dy, dx], dtype=np.float64)
    moved = np.stack([
        ndimage.affine_transform(channel.astype(np.float64), matrix, offset=offset, order=1,
                                 mode=SCIPY_MODES[mode], cval=float(np.float32(fill))).astype(np.float32)
        for channel in image
    ])
    return np.minimum(np.maximum(moved + np.float32(brightness), np.float32(0)), np.float32(1))


def reference_transform_metrics(P: np.ndarray, clean: np.ndarray, y: np.ndarray, transforms, steps) -> dict:
    """SPEC §2 over a §1b grid; `steps` maps a transform position (0–4) to its range step."""
    metrics = reference_metrics(P, clean, y, [t[:2] for t in transforms], None)
    index = {tuple(t): j for j, t in enumerate(transforms)}
    flips = total = 0
    for j, t in enumerate(transforms):
        for position, step in steps.items():
            neighbour = list(t)
            neighbour[position] = round(neighbour[position] + step, 9) + 0.0
            k = index.get(tuple(neighbour))
            if k is not None:
                flips += int((P[:, j] != P[:, k]).sum())
                total += len(P)
    metrics["flip_rate"] = flips / total if total else None
    return metrics
def reference_view(image: np.ndarray, dx: float, dy: float, mode: str, fill: float) -> np.ndarray:
    """One C×H×W float image shifted by the reference: exact moves, or scipy for sub-pixel shifts."""
    if float(dx).is_integer() and float(dy).is_integer():
        return reference_shift(image, int(dx), int(dy), mode, np.float32(fill))
    return reference_subpixel(image, dx, dy, mode, fill).astype(np.float32)


def reference_worst_shifts(model, images, labels, grid, mode, fill, mean, std):
    """Per sample: its flips, and the grid position whose softmax gives the true label the least probability.

    Each image is shifted alone (or, for a grid beyond translation, transformed by scipy's
    affine_transform and brightened: `reference_transform`), its views run through the model
    as one batch, the logits turned into probabilities by scipy in float64, and the grid
    walked in row order keeping the first strict minimum. Returns one dict per sample:
    position, prediction and probability at that position, clean prediction, flips
    (transforms predicting other than the clean view).
    """
    from scipy.special import softmax

    floats = images.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255)
    out = []
    for image, label in zip(floats, labels):
        views = [image] + ([reference_transform(image, t, mode, fill) for t in grid.transforms] if grid.axes
                           else [reference_view(image, dx, dy, mode, fill) for dx, dy in grid.shifts])
        x = (np.stack(views) - np.float32(mean)) / np.float32(std)
        with torch.no_grad():
            logits = model(torch.from_numpy(x.astype(np.float32))).double().numpy()
        clean, logits = int(np.argmax(logits[0])), logits[1:]
        best = 0
        for j in range(1, len(logits)):
            if softmax(logits[j])[int(label)] < softmax(logits[best])[int(label)]:
                best = j
        predictions = logits.argmax(axis=1)
        out.append({"position": best, "prediction": int(predictions[best]),
                    "probability": float(softmax(logits[best])[int(label)]), "clean": clean,
                    "flips": int((predictions != clean).sum())})
    return out
