"""One loop for every sweep: chunks of samples laid on canvases, batches of views through the model.

A task (classification, segmentation, a layer profile) brings only its
accumulator; chunking, prefetch, progress, cancel and checkpoints live here once.
Plain torch and numpy: no web, no queue, no database. Memory follows the batch
size, never N×S.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

import numpy as np
import torch

from core.sweep import per_channel
from worker.engine.plan import SweepError, SweepPlan
from worker.engine.shifting import Canvas, canvas_margin, make_canvas, normalize, normalized_canvas, to_float
from worker.engine.transforms import Sampler, apply_map, brighten, with_fill_slot

# A shift (dx, dy), or a whole transform (dx, dy, angle, scale, brightness).
Shift = tuple[float, ...]
REFERENCE: Shift = (0.0, 0.0)


@dataclass(frozen=True)
class ChunkViews:
    """One chunk of samples on canvases (as loaded, for sub-pixel shifts, and normalized)."""

    begin: int  # the chunk's first position in the sweep's indices
    rows: np.ndarray  # the chunk's sample indices
    raw: Canvas
    normalized: Canvas
    mean: torch.Tensor
    std: torch.Tensor
    sampler: Sampler | None = None  # for rotations and scales; None when the grid has none
    fill: float = 0.0

    @property
    def stop(self) -> int:
        return self.begin + len(self.rows)

    def batch(self, shifts: Sequence[Shift], rows: torch.Tensor | None = None) -> torch.Tensor:
        """The model's input for these shifts (or transforms) of the chunk (or of its `rows`), one contiguous N×C×H×W tensor."""
        views = [self.view(*shift) for shift in shifts]
        if rows is not None:
            views = [view.index_select(0, rows) for view in views]
        # The one copy per image: the views are strided windows into the canvas.
        return views[0].contiguous() if len(views) == 1 else torch.cat(views)

    def view(self, dx: float, dy: float, angle: float = 0.0, scale: float = 1.0,
             brightness: float = 0.0) -> torch.Tensor:
        """The normalized chunk under one transform; pure integer shifts are slices of the canvas."""
        if angle == 0 and scale == 1:
            if brightness == 0 and _integral(dx, dy):
                return self.normalized.integer_view(int(dx), int(dy))
            moved = self.raw.view(dx, dy)
        else:
            assert self.sampler is not None
            moved = apply_map(self.source, self.sampler.map(dx, dy, angle, scale), self.shape)
        return normalize(brighten(moved, brightness), self.mean, self.std)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """B, C, H, W of the chunk's views."""
        batch, channels = self.raw.pixels.shape[:2]
        return batch, channels, self.raw.height, self.raw.width

    @cached_property
    def source(self) -> torch.Tensor:
        """The unshifted chunk in float64 with its fill slot, what sampling maps read."""
        return with_fill_slot(self.raw.integer_view(0, 0), self.fill)

    def part(self, output: torch.Tensor, position: int) -> torch.Tensor:
        """The rows of a batch's output that belong to its `position`-th shift."""
        count = len(self.rows)
        return output[position * count : (position + 1) * count]


class Accumulator(Protocol):
    """A task's counts: told of each chunk's start, each batch's output, and each chunk's end."""

    @property
    def tally(self) -> Any: ...

    def begin(self, views: ChunkViews) -> None: ...

    def add(self, views: ChunkViews, shifts: Sequence[Shift], output: Any) -> None: ...

    def end(self, views: ChunkViews) -> None: ...


def _integral(dx: float, dy: float) -> bool:
    return float(dx).is_integer() and float(dy).is_integer()


def channel_tensor(values: Sequence[float], channels: int, device: torch.device) -> torch.Tensor:
    """A mean or std of one value, or one per channel, as a C×1×1 float32 tensor."""
    expanded = per_channel(values, channels)
    if expanded is None:
        raise SweepError(f"mean/std give {len(values)} values for {channels} channels")
    return torch.tensor(expanded, dtype=torch.float32, device=device).view(-1, 1, 1)


def shift_batches(plan: SweepPlan, per_batch: int, reference_alone: bool) -> list[list[Shift]]:
    """The shifts of each forward batch, in order; every evaluated shift once.

    `reference_alone` forwards the unshifted view first and on its own, for tasks
    that compare every shift with it; otherwise the reference is one of the shifts.
    """
    if reference_alone:
        others = [shift for shift in plan.grid.shifts if shift != REFERENCE]
        return [[REFERENCE], *_groups(others, per_batch)]
    return _groups(plan.grid.evaluated_transforms, per_batch)


def _groups(shifts: Sequence[Shift], size: int) -> list[list[Shift]]:
    return [list(shifts[first : first + size]) for first in range(0, len(shifts), size)]


def chunked_views(
    images: np.ndarray, indices: np.ndarray, plan: SweepPlan, *,
    chunk: int, start: int, device: torch.device, prefetch: bool,
) -> Generator[ChunkViews, None, None]:
    """Each chunk of `indices[start:]` on its canvases, in order.

    With `prefetch` the next chunk is read while this one runs: reading touches
    the memory-mapped dataset (disk) and builds the canvas, and torch and numpy
    release the GIL, so a second thread overlaps that with the forward passes.
    """
    channels = images.shape[3] if images.ndim == 4 else 1
    mean = channel_tensor(plan.mean, channels, device)
    std = channel_tensor(plan.std, channels, device)
    margin = canvas_margin(plan.grid.max_abs)
    geometric = any(angle != 0 or scale != 1 for _, _, angle, scale, _ in plan.grid.transforms)
    sampler = Sampler(plan.input_hw, plan.padding, device) if geometric else None

    def lay(begin: int) -> ChunkViews:
        rows = indices[begin : begin + chunk]
        # inference_mode is per thread, and this may run on the prefetch thread.
        with torch.inference_mode():
            raw = make_canvas(to_float(images[rows], device), plan.padding, plan.fill, margin, plan.input_hw)
            return ChunkViews(begin, rows, raw, normalized_canvas(raw, mean, std), mean, std, sampler, plan.fill)

    begins = list(range(start, len(indices), chunk))
    if not prefetch or len(begins) < 2:
        yield from map(lay, begins)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweep-prefetch") as pool:
        pending = pool.submit(lay, begins[0])
        for following in [*begins[1:], None]:
            current = pending.result()
            if following is not None:
                pending = pool.submit(lay, following)
            yield current


def drive(
    forward: Callable[[torch.Tensor], Any],
    accumulator: Accumulator,
    images: np.ndarray,
    indices: np.ndarray,
    plan: SweepPlan,
    *,
    reference_alone: bool,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    start: int = 0,
    prefetch: bool | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_chunk: Callable[[Any, int], None] | None = None,
) -> Any:
    """Run `indices[start:]` through `forward` into `accumulator`; return its tally.

    These options are every task's (run_sweep, run_segmentation_sweep, run_layer_profile
    pass them on). `on_progress(images_done)` runs after every forward batch and may
    raise to stop the sweep; `on_chunk(tally, next_start)` runs after every chunk of
    samples, so a caller can checkpoint and later resume from `next_start`. `prefetch`
    defaults to on for CUDA only; results are the same either way.
    """
    device = torch.device(device)
    if prefetch is None:
        # Measured (benchmarks/README.md): on CPU a second thread made no difference beyond the
        # noise (preparing a chunk is tiny next to its forward passes), so one thread is
        # simpler; on a GPU the host-side reading, pinning and copying is what it can overlap.
        prefetch = device.type == "cuda"
    chunk = max(1, min(batch_size, len(indices)))
    batches = shift_batches(plan, max(1, batch_size // chunk), reference_alone)
    done = start * plan.grid.images_per_sample
    chunks = chunked_views(images, indices, plan, chunk=chunk, start=start, device=device, prefetch=prefetch)
    with torch.inference_mode(), closing(chunks):
        for views in chunks:
            accumulator.begin(views)
            for shifts in batches:
                accumulator.add(views, shifts, forward(views.batch(shifts)))
                done += len(views.rows) * len(shifts)
                if on_progress is not None:
                    on_progress(done)
            accumulator.end(views)
            if on_chunk is not None:
                on_chunk(accumulator.tally, views.stop)
    if accumulator.tally is None:  # a task that sizes its tally from the model's output saw none
        raise SweepError("no samples were evaluated")
    return accumulator.tally
