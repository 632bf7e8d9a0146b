"""A sandboxed job's failure as the user reads it: an error type and a sentence that says what to do."""

from __future__ import annotations

from worker.sandbox.cage import CageConfig, CageFailure
from worker.sandbox.results import user_text


def _size(num_bytes: int) -> str:
    gib = num_bytes / (1 << 30)
    return f"{gib:g} GiB" if gib >= 1 else f"{num_bytes / (1 << 20):g} MiB"


def explain(failure: CageFailure, config: CageConfig, stage: str) -> tuple[str, str]:
    """(error type, detail) for a failure while validating (`stage` 'validation') or sweeping ('sweep')."""
    text = user_text(failure)
    kind = failure.kind
    if kind == "model":
        return "invalid_model" if stage == "validation" else "sweep_error", text
    if kind == "sweep":
        return "sweep_error", text
    if kind == "memory":
        return "memory_limit", (
            f"the model exceeded its {_size(config.memory_bytes)} memory limit; a smaller batch "
            "(SHIFTSCORE_BATCH_SIZE) or input lowers what it needs, or an operator can raise "
            "SHIFTSCORE_SANDBOX_MEMORY"
        )
    if kind == "timeout":
        return "time_limit", f"{text}; the model seems never to return, so it was stopped"
    if kind == "cpu":
        return "cpu_limit", f"{text} (SHIFTSCORE_SANDBOX_CPU_SECONDS); submit a smaller sweep"
    if kind == "died":
        return "model_crashed", f"{text}; the model's code crashed the process it runs in"
    if kind == "protocol":
        return "sandbox_error", f"the model's sandbox returned something that is not a result: {text}"
    if kind == "confine":
        return "sandbox_unavailable", (
            "the worker could not lock down the sandbox that runs models, so it ran nothing: "
            f"{text}. This is a problem of the service, not of the model; please retry later"
        )
    return "sweep_error" if stage == "sweep" else "invalid_model", f"the model failed while running: {text}"
