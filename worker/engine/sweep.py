"""The sweep: every sample under every shift of the grid, through the model, into a Tally.

Plain torch and numpy: no web, no queue, no database. Samples stream through in
chunks, so memory follows the batch size, never N×S.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from worker.engine.plan import SweepError, SweepPlan
from worker.engine.shifting import (
    Canvas,
    canvas_margin,
    make_canvas,
    normalize,
    normalized_canvas,
    to_float,
)
from worker.engine.tally import Tally

Predict = Callable[[torch.Tensor], torch.Tensor]


def _check_logits(logits: torch.Tensor, batch_rows: int, num_labels: int) -> None:
    """Shape checks only: they read no values, so a GPU can keep running ahead."""
    if logits.ndim != 2:
        raise SweepError(
            f"the model returned an output of shape {tuple(logits.shape)}; "
            "a classifier must return N×K logits"
        )
    if logits.shape[0] != batch_rows:
        raise SweepError(
            f"the model returned {logits.shape[0]} rows of logits for a batch of {batch_rows} "
            "images; it must return one row per image"
        )
    if logits.shape[1] < num_labels:
        raise SweepError(
            f"the model returns {logits.shape[1]} logits but the dataset has labels up to "
            f"{num_labels - 1}"
        )


def _integral(dx: float, dy: float) -> bool:
    return float(dx).is_integer() and float(dy).is_integer()


@dataclass(frozen=True)
class _Prepared:
    """One chunk of samples laid on canvases: as loaded (for sub-pixel) and normalized."""

    raw: Canvas
    normalized: Canvas


def _prepare(
    images: np.ndarray, rows: np.ndarray, plan: SweepPlan, margin: tuple[int, int],
    mean: torch.Tensor, std: torch.Tensor, device: torch.device,
) -> _Prepared:
    # inference_mode is per thread, and this may run on the prefetch thread.
    with torch.inference_mode():
        raw = make_canvas(to_float(images[rows], device), plan.padding, plan.fill, margin, plan.input_hw)
        return _Prepared(raw, normalized_canvas(raw, mean, std))


def _prepared_chunks(
    prepare: Callable[[np.ndarray], _Prepared], row_chunks: list[np.ndarray], prefetch: bool
) -> Iterator[_Prepared]:
    """Each chunk's canvases in order; with `prefetch`, the next one is read while this one runs.

    Reading a chunk touches the memory-mapped dataset (disk) and builds its canvas;
    torch and numpy release the GIL, so a second thread overlaps that with the forward passes.
    """
    if not prefetch or len(row_chunks) < 2:
        for rows in row_chunks:
            yield prepare(rows)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweep-prefetch") as pool:
        pending = pool.submit(prepare, row_chunks[0])
        for following in [*row_chunks[1:], None]:
            current = pending.result()
            if following is not None:
                pending = pool.submit(prepare, following)
            yield current


def _batch(
    chunk: _Prepared, group: Sequence[tuple[float, float]], mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """The model's input for these shifts of the chunk, one contiguous N×C×H×W tensor."""
    views = [
        chunk.normalized.integer_view(int(dx), int(dy)) if _integral(dx, dy)
        else normalize(chunk.raw.view(dx, dy), mean, std)
        for dx, dy in group
    ]
    # The one copy per image: the views are strided windows into the canvas.
    return views[0].contiguous() if len(views) == 1 else torch.cat(views)


def run_sweep(
    predict: Predict,
    images: np.ndarray,
    labels: np.ndarray,
    indices: Sequence[int] | np.ndarray,
    plan: SweepPlan,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    tally: Tally | None = None,
    start: int = 0,
    on_progress: Callable[[int], None] | None = None,
    on_chunk: Callable[[Tally, int], None] | None = None,
    prefetch: bool | None = None,
) -> Tally:
    """Sweep `indices[start:]` into `tally` and return it.

    `on_progress(images_done)` runs after every forward batch and may raise to stop
    the sweep; `on_chunk(tally, next_start)` runs after every chunk of samples, so
    a caller can checkpoint and later resume with `tally` and `start`. `prefetch`
    prepares the next chunk on a second thread (default: on CUDA only); results are the
    same either way.
    """
    device = torch.device(device)
    if prefetch is None:
        # Measured (benchmarks/README.md): on CPU a second thread made no difference beyond the
        # noise (preparing a chunk is tiny next to its forward passes), so one thread is
        # simpler; on a GPU the host-side reading, pinning and copying is what it can overlap.
        prefetch = device.type == "cuda"
    indices = np.asarray(indices, dtype=np.int64)
    grid = plan.grid
    shifts = plan.evaluated_shifts
    reference = shifts.index((0.0, 0.0))
    num_labels = int(labels[indices].max()) + 1 if len(indices) else 0
    pairs = np.asarray(grid.neighbour_pairs(), dtype=np.int64).reshape(-1, 2)
    tally = tally or Tally(num_shifts=grid.size)
    channels = images.shape[3] if images.ndim == 4 else 1
    mean = torch.tensor(_per_channel(plan.mean, channels), dtype=torch.float32, device=device)
    std = torch.tensor(_per_channel(plan.std, channels), dtype=torch.float32, device=device)
    mean, std = mean.view(-1, 1, 1), std.view(-1, 1, 1)
    margin = canvas_margin(grid.max_abs)
    chunk = max(1, min(batch_size, len(indices)))
    shifts_per_batch = max(1, batch_size // chunk)
    begins = list(range(start, len(indices), chunk))
    row_chunks = [indices[begin : begin + chunk] for begin in begins]
    prepare = partial(_prepare, images, plan=plan, margin=margin, mean=mean, std=std, device=device)
    done = start * len(shifts)
    with torch.inference_mode(), closing(_prepared_chunks(prepare, row_chunks, prefetch)) as chunks:
        for begin, rows, prepared in zip(begins, row_chunks, chunks):
            # Predictions stay on the device until the chunk ends: one sync per chunk, not per batch.
            predicted = torch.empty((len(shifts), len(rows)), dtype=torch.int64, device=device)
            finite = []
            for first in range(0, len(shifts), shifts_per_batch):
                group = shifts[first : first + shifts_per_batch]
                logits = predict(_batch(prepared, group, mean, std))
                _check_logits(logits, len(rows) * len(group), num_labels)
                finite.append(torch.isfinite(logits).all())
                # argmax takes the first of tied maxima, on CPU and CUDA alike (SPEC §1).
                predicted[first : first + len(group)] = (
                    logits.argmax(dim=1).to(device).view(len(group), len(rows))
                )
                done += len(rows) * len(group)
                if on_progress is not None:
                    on_progress(done)
            if not all(bool(flag) for flag in finite):
                raise SweepError("the model's output is not finite (NaN or infinity) for some inputs")
            all_predictions = np.ascontiguousarray(predicted.cpu().numpy().T)
            grid_predictions = (
                all_predictions if reference < grid.size else all_predictions[:, : grid.size]
            )
            tally.add(
                grid,
                grid_predictions,
                all_predictions[:, reference],
                np.asarray(labels[rows]),
                rows,
                pairs,
            )
            if on_chunk is not None:
                on_chunk(tally, begin + len(rows))
    return tally


def _per_channel(values: Sequence[float], channels: int) -> list[float]:
    values = list(values)
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise SweepError(f"mean/std give {len(values)} values for {channels} channels")
    return values
