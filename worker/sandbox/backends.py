"""Inside the cage: the runtimes a model can be swept on, the agreement check, and the one timing.

The reference runtime is the model's own: torch eager for TorchScript, exported
programs and state dicts, ONNX Runtime for an uploaded ONNX file. Torch models on
the CPU have two other candidates: ONNX Runtime (exported in memory, never to a
file) and oneDNN Graph (the model frozen as TorchScript, its ops fused by oneDNN).
A candidate is kept only if, on the validation batch, every row's argmax equals
the reference's and its logits agree within the tolerance below; then the
fastest kept (runtime, batch size) by one measurement, made here once, is the
model's choice. Sweeps read the choice and never measure again.
"""

from __future__ import annotations

import io
import math
import types
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from worker.model_loading import OnnxModel, onnx_session
from core.runtimes import ONEDNN, ONNXRUNTIME, TORCH, reference_backend

Forward = Callable[[torch.Tensor], torch.Tensor]

# The validation batch: VALIDATION_ROWS images of the declared input, half uniform noise
# and half 4×4-blocky noise (large flat areas, like real images), from a fixed seed, normalized
# like the sweep normalizes.
VALIDATION_ROWS = 32
VALIDATION_SEED = 0
# Logits agree when max |candidate − reference| ≤ ABS_TOLERANCE + REL_TOLERANCE × max |reference|.
ABS_TOLERANCE = 1e-4
REL_TOLERANCE = 1e-3
# Batch sizes tried, smallest first; a larger one is tried only while one batch's input stays
# under INPUT_BYTES_CAP and the timing so far under TIMING_BUDGET_S (per runtime).
BATCH_SIZES = (16, 64, 256, 512)
INPUT_BYTES_CAP = 64 * 1024 * 1024
TIMING_BUDGET_S = 3.0
NEAR_BEST = 0.05
# TorchScript's executor profiles a graph's first calls at a shape and only then optimizes
# (fuses) it: a candidate is compared and timed after this many calls at each batch shape.
WARMUP_CALLS = 3
ONNX_OPSET = 17


def validation_batch(spec: dict[str, Any], device: torch.device) -> torch.Tensor:
    """The fixed, documented batch every candidate is compared on."""
    channels, height, width = spec["channels"], spec["height"], spec["width"]
    generator = torch.Generator().manual_seed(VALIDATION_SEED)
    half = VALIDATION_ROWS // 2
    uniform = torch.rand(half, channels, height, width, generator=generator)
    coarse = torch.rand(VALIDATION_ROWS - half, channels, (height + 3) // 4, (width + 3) // 4, generator=generator)
    blocky = coarse.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)[:, :, :height, :width]
    images = torch.cat([uniform, blocky])
    mean = _channel_values(spec.get("mean"), channels, 0.0)
    std = _channel_values(spec.get("std"), channels, 1.0)
    return ((images - mean) / std).contiguous().to(device)


def _channel_values(value: Any, channels: int, default: float) -> torch.Tensor:
    values = [default] if value is None else [value] if isinstance(value, (int, float)) else list(value)
    return torch.tensor(values * (channels // len(values)), dtype=torch.float32).view(1, channels, 1, 1)


def agreement(reference: torch.Tensor, candidate: torch.Tensor) -> dict[str, Any]:
    """How closely a candidate's output matches the reference's on the validation batch."""
    return judged([compared(reference, candidate)])


def compared(reference: torch.Tensor, candidate: torch.Tensor) -> dict[str, Any]:
    """One batch's raw figures for `judged`: rows, rows whose argmax agrees, max |difference|, max |reference|."""
    reference, candidate = reference.detach().float().cpu(), candidate.detach().float().cpu()
    rows = int(reference.shape[0])
    if reference.shape != candidate.shape:
        return {"rows": rows, "argmax_equal": 0, "max_abs_diff": None, "largest": None}
    same = (reference.argmax(dim=1) == candidate.argmax(dim=1)).reshape(rows, -1).all(dim=1)
    empty = not reference.numel()
    return {"rows": rows, "argmax_equal": int(same.sum()),
            "max_abs_diff": 0.0 if empty else float((reference - candidate).abs().max()),
            "largest": 0.0 if empty else float(reference.abs().max())}


def judged(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The agreement rule over batches compared one by one (`compared`), as if they were one batch."""
    rows = sum(part["rows"] for part in parts)
    argmax_equal = sum(part["argmax_equal"] for part in parts)
    if any(part["max_abs_diff"] is None for part in parts):
        return {"rows": rows, "argmax_equal": 0, "max_abs_diff": None,
                "tolerance": None, "agrees": False, "reason": "the output shape differs"}
    difference = _largest([part["max_abs_diff"] for part in parts])
    tolerance = ABS_TOLERANCE + REL_TOLERANCE * _largest([part["largest"] for part in parts])
    agrees = argmax_equal == rows and np.isfinite(difference) and difference <= tolerance
    reason = None
    if argmax_equal < rows:
        reason = f"argmax differs on {rows - argmax_equal} of {rows} rows"
    elif not agrees:
        reason = f"logits differ by {difference:.3g}, over the tolerance {tolerance:.3g}"
    return {"rows": rows, "argmax_equal": argmax_equal, "max_abs_diff": difference,
            "tolerance": tolerance, "agrees": bool(agrees), "reason": reason}


def _largest(values: list[float]) -> float:
    # NaN wins, as in torch's max: Python's max() would drop it or not by its position.
    return math.nan if any(math.isnan(value) for value in values) else max(values, default=0.0)


def _pool_matrix(size: int, out: int) -> torch.Tensor:
    """out×size: row i averages torch's adaptive window [⌊i·size/out⌋, ⌈(i+1)·size/out⌉)."""
    matrix = torch.zeros(out, size)
    for i in range(out):
        start, stop = (i * size) // out, -((-(i + 1) * size) // out)
        matrix[i, start:stop] = 1.0 / (stop - start)
    return matrix


def _adaptive_average_pool(g: Any, x: Any, output_size: Any) -> Any:
    """aten::adaptive_avg_pool2d in ONNX, at any output size, as two products with fixed matrices.

    ONNX has no adaptive pooling, and torch's exporter refuses an output size that does
    not divide the input (LeNet's 7×7 → 4×4). The input's height and width are fixed by
    the declared input, so the windows are too: left and right products with averaging
    matrices compute them. Only the order of the sums can differ from torch's, which
    the agreement check measures. Sizes that divide keep the exporter's own pooling.
    """
    from torch.onnx import symbolic_helper, symbolic_opset9

    sizes = symbolic_helper._get_tensor_sizes(x)
    out = symbolic_helper._maybe_get_const(output_size, "is")
    height, width = (sizes or [None, None])[-2:]
    if not isinstance(height, int) or not isinstance(width, int) or not isinstance(out, (list, tuple)) or \
            (height % out[0] == 0 and width % out[1] == 0):
        return symbolic_opset9.adaptive_avg_pool2d(g, x, output_size)
    rows = g.op("Constant", value_t=_pool_matrix(height, int(out[0])))
    columns = g.op("Constant", value_t=_pool_matrix(width, int(out[1])).t().contiguous())
    return g.op("MatMul", g.op("MatMul", rows, x), columns)


def onnx_bytes(model: torch.nn.Module, example: torch.Tensor) -> bytes:
    """The torch model exported in memory to ONNX, with a dynamic batch."""
    buffer = io.BytesIO()
    torch.onnx.register_custom_op_symbolic("aten::adaptive_avg_pool2d", _adaptive_average_pool, ONNX_OPSET)
    # The exporter switches the module to eval mode through train(False), which a torch.export
    # program refuses; every loaded model is in eval mode already (worker.model_loading).
    # TorchScript modules (scripted or traced) take train(False) themselves and no new attributes.
    patched = not isinstance(model, torch.jit.ScriptModule)
    if patched:
        model.train = types.MethodType(lambda self, mode=True: self, model)  # type: ignore[method-assign]
    try:
        torch.onnx.export(
            model, (example[:2].cpu(),), buffer, dynamo=False, input_names=["images"], output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=ONNX_OPSET,
        )
    finally:
        if patched:
            del model.train
    return buffer.getvalue()


def onnx_export(model: torch.nn.Module, example: torch.Tensor, threads: int) -> OnnxModel:
    """The torch model as an ONNX Runtime session, exported in memory (never to a file)."""
    return OnnxModel(onnx_session(onnx_bytes(model, example), threads), None)


class OneDnnFused:
    """The model frozen as TorchScript; while it runs, oneDNN Graph fuses its ops (conv, bias, ReLU, pool)."""

    def __init__(self, model: torch.nn.Module, example: torch.Tensor) -> None:
        scripted = model if isinstance(model, torch.jit.ScriptModule) else \
            torch.jit.trace(model, example, check_trace=False)
        self.frozen = torch.jit.freeze(scripted.eval())

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        # The switch is global to the process: on only around these calls, so that the
        # reference (the same TorchScript, unfrozen) is never fused by the graph executor.
        torch.jit.enable_onednn_fusion(True)
        try:
            return self.frozen(batch)
        finally:
            torch.jit.enable_onednn_fusion(False)


# How each runtime other than the model's own is built from a loaded torch model (CPU only).
_BUILDERS: dict[str, Callable[[torch.nn.Module, torch.Tensor], Forward]] = {
    ONNXRUNTIME: lambda model, example: onnx_export(model, example, torch.get_num_threads()),
    ONEDNN: OneDnnFused,
}
_FAILED = {ONNXRUNTIME: "the ONNX export failed", ONEDNN: "freezing for oneDNN Graph failed"}


def build(name: str, model: torch.nn.Module, example: torch.Tensor) -> Forward:
    """The torch model on runtime `name` (one of _BUILDERS); raises what the conversion raises."""
    return _BUILDERS[name](model, example)


def candidates(fmt: str, model: Any, example: torch.Tensor, device: torch.device) -> dict[str, Any]:
    """Name → forward (or the reason it could not be built); the reference first."""
    if fmt == "onnx":
        return {ONNXRUNTIME: model}
    built: dict[str, Any] = {TORCH: model}
    if device.type == "cpu" and isinstance(model, torch.nn.Module):
        for name in _BUILDERS:
            try:
                built[name] = build(name, model, example)
            except Exception as exc:  # noqa: BLE001 — a model that does not convert stays on the others
                built[name] = f"{_FAILED[name]}: {type(exc).__name__}: {str(exc)[:200]}"
    return built


def time_batches(forward: Forward, sample: torch.Tensor, expected: torch.Tensor,
                 deadline: float = math.inf) -> dict[str, Any]:
    """Seconds per image at each batch size tried (best of two after a warm-up), and the fastest size.

    Kernels may pick other algorithms at other batch sizes: a size whose predictions
    differ from the reference's on the repeated validation batch is not eligible.
    """
    per_image: dict[str, float] = {}
    image_bytes = sample[0].numel() * 4
    spent = 0.0
    with torch.inference_mode():
        for size in BATCH_SIZES:
            over = spent > TIMING_BUDGET_S or time.monotonic() > deadline
            if size > BATCH_SIZES[0] and (size * image_bytes > INPUT_BYTES_CAP or over):
                break
            repeats = (size + len(sample) - 1) // len(sample)
            batch = sample.repeat(repeats, 1, 1, 1)[:size].contiguous()
            wanted = expected.argmax(dim=1).repeat(repeats, *([1] * (expected.ndim - 2)))[:size]
            output = _warmed(forward, batch)
            same = bool((output.argmax(dim=1).cpu() == wanted.cpu()).all())
            seconds = [_timed(forward, batch) for _ in range(2)]
            spent += sum(seconds) * 1.5
            if same:
                per_image[str(size)] = min(seconds) / size
    if not per_image:
        raise RuntimeError("no batch size reproduced the validation batch's predictions")
    # Within NEAR_BEST of the fastest, the largest: the engine's own cost is per batch.
    fastest = min(per_image.values())
    best = max((size for size, seconds in per_image.items() if seconds <= fastest * (1 + NEAR_BEST)), key=int)
    return {"seconds_per_image": per_image[best], "batch_size": int(best), "per_batch_size": per_image}


def _warmed(forward: Forward, batch: torch.Tensor) -> torch.Tensor:
    """The output of the last of WARMUP_CALLS calls: what the runtime gives once it has optimized."""
    for _ in range(WARMUP_CALLS - 1):
        forward(batch)
    return forward(batch)


def _timed(forward: Forward, batch: torch.Tensor) -> float:
    started = time.perf_counter()
    output = forward(batch)
    if output.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - started


def choose(fmt: str, model: Any, spec: dict[str, Any], device: torch.device,
           budget_s: float = math.inf) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check and time every candidate; return the runtime record and name → forward of those kept.

    Past `budget_s` only the reference is timed (at its smallest batch size if need be), so a
    slow model or a busy machine never makes validation overrun its wall-time limit.
    """
    deadline = time.monotonic() + budget_s
    batch = validation_batch(spec, device)
    reference = reference_backend(fmt)
    built = candidates(fmt, model, batch, device)
    with torch.inference_mode():
        expected = built[reference](batch)
    if expected.shape[0] != batch.shape[0]:
        raise RuntimeError(f"the model returned {expected.shape[0]} rows of logits for a batch of {batch.shape[0]} "
                           "images; it must return one row per image")
    report: dict[str, Any] = {}
    kept: dict[str, Forward] = {}
    for name, forward in built.items():
        if name != reference and time.monotonic() > deadline:
            forward = "validation had no time left to check it (SHIFTSCORE_SANDBOX_WALL_SECONDS)"
        if isinstance(forward, str):
            report[name] = {"kept": False, "reason": forward}
            continue
        try:
            with torch.inference_mode():
                checked = agreement(expected, expected if name == reference else _warmed(forward, batch))
            report[name] = {"kept": checked["agrees"], **checked}
            if checked["agrees"]:
                report[name].update(time_batches(forward, batch, expected, deadline))
                kept[name] = forward
        except Exception as exc:  # noqa: BLE001 — a runtime that fails at some batch is not kept
            if name == reference and not isinstance(exc, RuntimeError):
                raise
            reason = str(exc) if name == reference else \
                f"it failed on the validation batch: {type(exc).__name__}: {str(exc)[:200]}"
            report.setdefault(name, {}).update(kept=False, reason=reason)
    if reference not in kept:
        raise RuntimeError(f"the model's own runtime did not reproduce its predictions on the validation batch: "
                           f"{report[reference].get('reason', 'its outputs disagree')}")
    best = min(kept, key=lambda name: report[name]["seconds_per_image"])
    record = {
        "backend": best, "reference": reference, "batch_size": report[best]["batch_size"],
        "seconds_per_image": report[best]["seconds_per_image"], "candidates": report,
    }
    return record, kept
