"""Check an uploaded model in its sandbox: load it, run it on the declared input, choose its runtime.

Validation holds a lease like a chunk (db.leases, taken by db.jobs.claim_validation): a model whose
worker dies is taken over after SHIFTSCORE_STALE_AFTER, and one that was
started SHIFTSCORE_MAX_ATTEMPTS times is marked invalid instead of coming back.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from functools import partial
from typing import Any

from core.settings import get_settings
from db import jobs, leases
from db.blobs import blob_path
from db.models import Model
from db.session import session_scope
from core.runtimes import BadRuntime, check_runtime
from worker.evaluations import model_fields
from worker.heartbeat import Heartbeat
from worker.sandbox.cage import Cage, CageFailure
from worker.sandbox.failures import explain
from worker.sandbox.pool import cage_config

log = logging.getLogger(__name__)


def _beat(claim: leases.Lease) -> bool:
    with session_scope() as session:
        return leases.beat(session, leases.VALIDATION, claim)


def validate_uploaded_model(model_id: str, worker: str) -> None:
    """Load an uploaded model in a fresh sandbox, run it on a dummy batch, and mark it ready or invalid."""
    settings = get_settings()
    with session_scope() as session:
        claim = jobs.claim_validation(
            session, model_id, worker, timedelta(seconds=settings.stale_after_s), settings.max_attempts
        )
        if claim is None:
            return
        model = session.get(Model, model_id)
        fields = model_fields(model)
        path = blob_path(session, model.sha256, settings.cache_dir)
    config = cage_config(settings)
    outcome: dict[str, Any] = {"error": None, "num_parameters": None, "num_outputs": None, "runtime": None}
    with Heartbeat(partial(_beat, claim), max(0.1, settings.stale_after_s / 4)):
        try:
            outcome.update(_check(fields, path, config))
        except CageFailure as exc:
            outcome["error"] = explain(exc, config, "validation")[1]
            log.info("model %s is invalid: %s (%s)", model_id, outcome["error"], exc.kind)
    with session_scope() as session:
        jobs.record_model_validation(session, claim, **outcome)


def _check(fields: dict[str, Any], path: Any, config: Any) -> dict[str, Any]:
    """Everything validation learns about the model; the whole must fit in the wall-time limit."""
    cage = Cage({"model": path}, fields, config)
    started = time.monotonic()

    def left() -> float:
        return max(0.1, config.wall_seconds - (time.monotonic() - started))

    try:
        loaded = cage.run({"op": "load"}, left(), "loading the model")
        # Half of what is left for choosing the runtime: the rest is margin for a busy machine.
        checked = cage.run({"op": "validate", "budget_s": left() / 2}, left(),
                           "running the model on its declared input")
    finally:
        cage.close()
    return {
        "num_parameters": _optional_count(loaded.get("num_parameters")),
        "num_outputs": _optional_count(checked.get("num_outputs")),
        "seconds_per_image": _seconds(checked.get("seconds_per_image")),
        "runtime": _runtime(checked.get("runtime"), fields["format"]),
    }


def _runtime(record: Any, fmt: str) -> dict[str, Any]:
    try:
        return check_runtime(record, fmt)
    except BadRuntime as exc:
        raise CageFailure("protocol", f"the sandbox reported an impossible runtime choice: {exc}") from exc


def _optional_count(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 62:
        raise CageFailure("protocol", "the sandbox reported an impossible count")
    return value


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 3600:
        raise CageFailure("protocol", "the sandbox reported an impossible batch time")
    return float(value)
