"""The periodic reconciler: the database is the truth, the queue only carries work.

It puts back chunks whose worker went silent (killed, lost its host) and
re-sends messages the broker lost (a Redis restart, an enqueue that failed while
the broker was down), among them the model validations and dataset ingestions
whose worker went silent (their lease, db.leases, decides who may take them and
when they give up). Once per SHIFTSCORE_RECLAIM_PERIOD it also deletes the blobs
nothing needs any more (db.blobs.reclaim_blobs). Torch-free: it runs in the
scheduler process.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from core.queue import (
    enqueue_chunk,
    enqueue_dataset_ingestion,
    enqueue_evaluation,
    enqueue_model_validation,
    queue_depth,
)
from core.settings import Settings, get_settings
from db import jobs
from db.blobs import reclaim_blobs
from db.models import utcnow
from db.session import session_scope

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reconciled:
    """What one pass did."""

    stale_chunks: int
    resent: int
    reclaimed_blobs: int = 0


_last_reclaim: float | None = None


def reconcile(settings: Settings | None = None) -> Reconciled:
    """Re-enqueue stale chunks, and re-send waiting work when the broker holds fewer messages than rows."""
    settings = settings or get_settings()
    cutoff = utcnow() - timedelta(seconds=settings.stale_after_s)
    with session_scope() as session:
        stale = jobs.requeue_stale_chunks(session, cutoff, settings.max_attempts)
    for evaluation_id, index in stale:
        enqueue_chunk(evaluation_id, index)
    with session_scope() as session:
        waiting = jobs.waiting_work(session, cutoff)
    resent = 0
    # Every waiting row should have a message in the queue; fewer messages than rows means
    # some were lost. Which ones is unknown, so everything that waited long is sent again:
    # a duplicate is harmless, since a worker claims with a conditional update.
    if waiting.count and queue_depth() < waiting.count:
        for evaluation_id in waiting.evaluations:
            enqueue_evaluation(evaluation_id)
        for evaluation_id, index in waiting.chunks:
            enqueue_chunk(evaluation_id, index)
        for model_id in waiting.models:
            enqueue_model_validation(model_id)
        for dataset_id in waiting.datasets:
            enqueue_dataset_ingestion(dataset_id)
        with session_scope() as session:
            jobs.mark_enqueued(session, waiting.chunks)
        resent = len(waiting.evaluations) + len(waiting.chunks) + len(waiting.models) + len(waiting.datasets)
    if stale or resent:
        log.warning("reconciler: re-enqueued %d stale chunk(s), re-sent %d lost message(s)", len(stale), resent)
    return Reconciled(stale_chunks=len(stale), resent=resent, reclaimed_blobs=_reclaim_now_and_then(settings))


def _reclaim_now_and_then(settings: Settings) -> int:
    """Delete unneeded blobs once per SHIFTSCORE_RECLAIM_PERIOD (the first pass does it at once)."""
    global _last_reclaim
    if _last_reclaim is not None and time.monotonic() - _last_reclaim < settings.reclaim_period_s:
        return 0
    _last_reclaim = time.monotonic()
    with session_scope() as session:
        reclaimed = reclaim_blobs(session)
    if reclaimed:
        log.info("reconciler: deleted %d blob(s) that no live model or dataset needs", reclaimed)
    return reclaimed
