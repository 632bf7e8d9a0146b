"""Which runtime and batch size a sweep uses: the sandbox's record of them, checked, and the choice.

Torch-free: the API fixes an evaluation's runtime at submission from the model's
record (worker/sandbox/backends.py makes it, once, at validation) and the request.
"""

from __future__ import annotations

import math
from typing import Any

# torch eager; ONNX Runtime; the model frozen as TorchScript with oneDNN Graph fusing its ops (CPU).
TORCH, ONNXRUNTIME, ONEDNN = "torch", "onnxruntime", "onednn"
BACKENDS = (TORCH, ONNXRUNTIME, ONEDNN)
# What a request may ask for: the chosen runtime, or torch eager (the model's own runtime).
REQUESTABLE = ("auto", TORCH)
MAX_BATCH_SIZE = 4096
_AGREEMENT = ("rows", "argmax_equal", "max_abs_diff", "tolerance")
# A sweep chunk on a runtime other than the model's own first checks it, by the validation
# batch's rule, on the unshifted views of the chunk's first REAL_DATA_ROWS samples; on
# disagreement that chunk runs on the model's own runtime (worker/sandbox/real_data.py).
REAL_DATA_CHECK = "real_data_check"
REAL_DATA_ROWS = 256


class BadRuntime(ValueError):
    """The sandbox's runtime record is not one it could have made."""


def reference_backend(fmt: str) -> str:
    """The model's own runtime, against which every other candidate is checked."""
    return ONNXRUNTIME if fmt == "onnx" else TORCH


def _number(value: Any, what: str, low: float = 0.0, high: float = 1e9) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRuntime(f"{what} is not a number")
    if not low <= value <= high:
        raise BadRuntime(f"{what} is out of range")
    return float(value)


def _count(value: Any, what: str, high: int = MAX_BATCH_SIZE) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise BadRuntime(f"{what} is not a count")
    return value


def _candidate(name: str, entry: Any) -> dict[str, Any]:
    if not isinstance(entry, dict) or not isinstance(entry.get("kept"), bool):
        raise BadRuntime(f"the entry for {name} is malformed")
    reason = entry.get("reason")
    clean: dict[str, Any] = {"kept": entry["kept"], "reason": None if reason is None else str(reason)[:300]}
    if "rows" in entry:
        clean["rows"] = _count(entry["rows"], "rows")
        clean["argmax_equal"] = _count(entry["argmax_equal"], "argmax_equal")
        for key in ("max_abs_diff", "tolerance"):
            clean[key] = None if entry.get(key) is None else _number(entry[key], key, high=math.inf)
    if entry["kept"]:
        clean["batch_size"] = _count(entry.get("batch_size"), "batch_size")
        clean["seconds_per_image"] = _number(entry.get("seconds_per_image"), "seconds_per_image", high=3600)
        sizes = entry.get("per_batch_size")
        if not isinstance(sizes, dict) or len(sizes) > 16:
            raise BadRuntime("per_batch_size is malformed")
        clean["per_batch_size"] = {str(_count(int(size) if str(size).isdigit() else -1, "a batch size")):
                                   _number(seconds, "seconds", high=3600) for size, seconds in sizes.items()}
    return clean


def check_runtime(record: Any, fmt: str) -> dict[str, Any]:
    """The sandbox's runtime record, rebuilt from checked fields only; raises BadRuntime."""
    if not isinstance(record, dict) or not isinstance(record.get("candidates"), dict):
        raise BadRuntime("the runtime record is not an object")
    candidates = record["candidates"]
    if not set(candidates) <= set(BACKENDS) or reference_backend(fmt) not in candidates:
        raise BadRuntime("the runtime record names unknown runtimes")
    checked = {name: _candidate(name, entry) for name, entry in candidates.items()}
    backend = record.get("backend")
    if backend not in checked or not checked[backend]["kept"]:
        raise BadRuntime("the chosen runtime was not kept")
    return {
        "backend": backend, "reference": reference_backend(fmt),
        "batch_size": checked[backend]["batch_size"],
        "seconds_per_image": checked[backend]["seconds_per_image"], "candidates": checked,
    }


def evaluation_runtime(fmt: str, model_runtime: dict[str, Any] | None, requested: str,
                       default_batch_size: int) -> dict[str, Any]:
    """What an evaluation runs on: the backend, its batch size, and the agreement figures behind it."""
    if model_runtime is None:
        # Validated before runtimes were chosen: the model's own runtime at the global batch size.
        return {"backend": reference_backend(fmt), "batch_size": default_batch_size, "forced": requested != "auto",
                "agreement": None}
    backend = model_runtime["backend"] if requested == "auto" else requested
    entry = model_runtime["candidates"][backend]
    return {
        "backend": backend, "batch_size": entry["batch_size"], "forced": requested != "auto",
        "agreement": {key: entry.get(key) for key in _AGREEMENT},
    }


def _closeness(part: dict[str, Any]) -> tuple[bool, float]:
    """Orders a chunk's check by how near it came to failing: disagreements first, then diff/tolerance."""
    difference, tolerance = part["max_abs_diff"], part["tolerance"]
    ratio = math.inf if difference is None or not tolerance else difference / tolerance
    return (not part["agrees"], ratio)


def real_data_record(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The evaluation's `real_data_check` (and `note`) from its chunks' checks, one per chunk.

    Rows and equal argmaxes add up; `max_abs_diff` and `tolerance` are those of the chunk
    nearest to (or furthest past) its own tolerance, since each chunk is judged on its own.
    """
    closest = max(parts, key=_closeness)
    fell_back = sum(not part["agrees"] for part in parts)
    record: dict[str, Any] = {REAL_DATA_CHECK: {
        "chunks": len(parts), "rows": sum(part["rows"] for part in parts),
        "argmax_equal": sum(part["argmax_equal"] for part in parts),
        "max_abs_diff": closest["max_abs_diff"], "tolerance": closest["tolerance"], "fell_back_chunks": fell_back,
        # Records from before near ties were re-run have none.
        "near_tie_rows": sum(part.get("near_tie_rows", 0) for part in parts),
    }}
    if fell_back:
        # Only torch models have other runtimes, each checked against torch eager.
        record["note"] = (f"the runtime chosen at validation disagreed with the model's own (torch eager) on the real "
                          f"images of {fell_back} of {len(parts)} chunks; those chunks ran on torch eager, so every "
                          "result is the model's own")
    return record
