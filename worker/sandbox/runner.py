"""Inside the cage: the jobs a sandbox runs on its one model (load, validate, sweep a chunk).

Plain torch and the engine; the worker outside gets only what `run` returns
and the events passed to `send`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from core.grid import build_sweep_grid
from core.runtimes import REAL_DATA_CHECK
from worker.engine.device import pick_device
from worker.engine.early_exit import run_worst_case
from worker.engine.layers import LAYERS, LayerTally, run_layer_profile
from worker.engine.plan import SweepError, SweepPlan, sample_indices, sweep_kind
from worker.engine.segmentation import SegmentationTally, run_segmentation_sweep
from worker.engine.sweep import run_sweep
from worker.engine.tally import Tally
from worker.model_loading import ModelLoadError, count_parameters, excerpt, load_model, validate_model
from worker.sandbox import backends, real_data
from worker.sandbox.near_ties import NearTiesOnReference

Send = Callable[..., None]


class Engine(NamedTuple):
    """How one kind of sweep runs a chunk, and how its saved tally is read back to resume."""

    run: Callable[..., Any]
    saved: Callable[[dict[str, Any]], Any]


# Sweep kind (worker.engine.plan.sweep_kind) -> its engine; worker.completion.FINISHERS has the same keys.
ENGINES: dict[str, Engine] = {
    "classification": Engine(run_sweep, Tally.from_json),
    "worst_case": Engine(run_worst_case, Tally.from_json),
    "segmentation": Engine(run_segmentation_sweep, SegmentationTally.from_json),
}


def plan_for(request: dict[str, Any], input_spec: dict[str, Any]) -> SweepPlan:
    """The engine's plan for a stored evaluation request and the model's declared input."""
    return SweepPlan(
        grid=build_sweep_grid(request),
        padding=request["padding"],
        fill=float(request["fill"]),
        mean=tuple(input_spec["mean"]),
        std=tuple(input_spec["std"]),
        input_hw=(input_spec["height"], input_spec["width"]),
    )


class Runner:
    """One model, loaded once, and the jobs run on it."""

    def __init__(self, setup: dict[str, Any], send: Send) -> None:
        torch.set_num_threads(int(setup["threads"]))
        self.send = send
        self.device = pick_device(setup["device"])
        self.fields: dict[str, Any] = setup["model"]
        self.paths: dict[str, str] = setup["paths"]
        self.model: Any = None
        # What sweeps call: the model itself, or the runtime validation chose for it.
        self.forward: Any = None

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        """Run one job and return its result."""
        operations = {"load": self.load, "validate": self.validate, "sweep": self.sweep, "probe": probe}
        return operations[job["op"]](job)

    def load(self, job: dict[str, Any]) -> dict[str, Any]:
        fields = self.fields
        model = load_model(
            fields["format"], self.paths["model"], architecture=fields["architecture"],
            options=fields["options"], input_spec=fields["input"],
        )
        if isinstance(model, torch.nn.Module):
            model = model.to(self.device)
        self.model = self.forward = model
        # The other runtimes are CPU candidates: a CUDA worker runs the model's own torch on the GPU.
        backend = fields.get("backend")
        if backend not in (None, backends.TORCH) and fields["format"] != "onnx" and self.device.type == "cpu":
            self.forward = backends.build(backend, model, backends.validation_batch(fields["input"], self.device))
        return {"num_parameters": count_parameters(model)}

    def validate(self, job: dict[str, Any]) -> dict[str, Any]:
        """Check the model on its declared input, then choose and time its runtime (backends.choose)."""
        checked = validate_model(self.model, self.fields["input"], self.fields["task"])
        runtime, _ = backends.choose(self.fields["format"], self.model, self.fields["input"], self.device,
                                     float(job.get("budget_s", math.inf)))
        # The per-batch deadline must hold for every runtime a request may force: the slowest kept.
        slowest = max(entry["seconds_per_image"] for entry in runtime["candidates"].values() if entry["kept"])
        return {**checked, "seconds_per_image": slowest, "runtime": runtime}

    def sweep(self, job: dict[str, Any]) -> dict[str, Any]:
        """Sweep samples `[start, stop)` of the evaluation, resuming at `position` from `tally`.

        A layer profile, when asked for, follows the sweep over the same samples; its checkpoints
        carry the finished sweep's tally with the profile so far, so a retry resumes either.
        """
        request, spec = job["request"], self.fields["input"]
        images = np.load(self.paths["images"], mmap_mode="r")
        targets = np.load(self.paths["targets"])
        plan = plan_for(request, spec)
        indices = sample_indices(len(targets), request.get("max_samples"), request.get("seed", 0))
        rows = indices[job["start"] : job["stop"]]
        batch_size = int(job["batch_size"])
        forward, check = self._checked_forward(images, rows, plan, batch_size)
        checkpoints = _Checkpoints(self.send, float(job["checkpoint_every"]))
        saved = {key: value for key, value in (job["tally"] or {}).items() if key != LAYERS}
        engine = ENGINES[sweep_kind(self.fields["task"], request)]
        chunk_tally = engine.run(
            forward, images, targets, rows, plan, tally=engine.saved(saved) if saved else None,
            batch_size=batch_size, device=self.device, start=job["position"] - job["start"],
            on_progress=self._progress, on_chunk=lambda tally, next_start: checkpoints(tally.to_json, next_start),
        ).to_json()
        asked = request.get(LAYERS)
        if asked:
            profiled = (job["tally"] or {}).get(LAYERS)
            profile = LayerTally.from_json(profiled) if profiled else None
            swept = len(rows) * plan.grid.images_per_sample
            profile = run_layer_profile(
                self.model, images, rows, plan, None if asked is True else list(asked), batch_size=batch_size,
                device=self.device, tally=profile, start=profile.n if profile else 0,
                # The evaluation counts the sweep's images: the profile repeats the total, which keeps
                # the worker writing (and so noticing a cancel) while it runs.
                on_progress=lambda _: self._progress(swept),
                on_chunk=lambda layers, _: checkpoints(lambda: {**chunk_tally, LAYERS: layers.to_json()}, len(rows)),
            )
            chunk_tally[LAYERS] = profile.to_json()
        if check is not None:
            chunk_tally[REAL_DATA_CHECK] = {**check, "near_tie_rows": getattr(forward, "rerun", 0)}
        return {"tally": chunk_tally}

    def _checked_forward(self, images: np.ndarray, rows: np.ndarray, plan: SweepPlan,
                         batch_size: int) -> tuple[Any, dict[str, Any] | None]:
        """What this chunk runs on, and the real-data check behind it (None on the model's own runtime).

        The same first samples every attempt, whatever its resume position: a retried chunk
        decides as its first attempt did, and its one record replaces the earlier one.
        """
        if self.forward is self.model:
            return self.model, None
        check = real_data.check_chunk(self.model, self.forward, images, rows, plan, batch_size=batch_size,
                                      device=self.device, on_forward=lambda: self.send("alive"))
        return (NearTiesOnReference(self.forward, self.model) if check["agrees"] else self.model), check

    def _progress(self, done: int) -> None:
        self.send("progress", done=int(done))


def probe(job: dict[str, Any]) -> dict[str, Any]:
    """What the cage lets through, for the worker's start-up check (each should be refused)."""
    import os
    import socket

    def refused(action: Callable[[], Any]) -> bool:
        try:
            action()
        except OSError:
            return True
        return False

    return {
        "socket": refused(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()),
        "fork": refused(os.fork),
        "environment": sorted(os.environ),
        "tensor": float(torch.ones(2).sum()),
    }


class _Checkpoints:
    """Sends the running tally at most every `every` seconds, so a retry resumes near here."""

    def __init__(self, send: Send, every: float) -> None:
        self.send, self.every = send, every
        self.last = time.monotonic()

    def __call__(self, tally: Callable[[], dict[str, Any]], next_start: int) -> None:
        """Send `tally()` as the state at `next_start`, unless one went out less than `every` seconds ago."""
        if time.monotonic() - self.last >= self.every:
            self.send("checkpoint", next_start=int(next_start), tally=tally())
            self.last = time.monotonic()


_ALLOCATION_FAILURES = ("can't allocate memory", "DefaultCPUAllocator", "bad_alloc", "out of memory")


def _out_of_memory(exc: BaseException | None) -> bool:
    """Whether an allocation failure is behind `exc` (validation wraps the model's errors in its own)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, MemoryError) or any(marker in str(exc) for marker in _ALLOCATION_FAILURES):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def describe_failure(exc: BaseException) -> dict[str, str]:
    """What went wrong, as the `error` event's fields; the worker bounds the text it keeps."""
    if _out_of_memory(exc):
        return {"kind": "memory", "message": str(exc)}
    if isinstance(exc, ModelLoadError):
        return {"kind": "model", "message": str(exc)}
    if isinstance(exc, SweepError):
        return {"kind": "sweep", "message": str(exc)}
    return {"kind": "crash", "message": f"{type(exc).__name__}: {excerpt(exc)}"}
