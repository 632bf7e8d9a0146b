"""A lease on one row's background work (model validation, dataset ingestion), held like a chunk's (db.jobs).

A worker takes the work with a conditional update that raises the attempt count and
sets itself as holder with a fresh heartbeat; it beats while it works, and every
write it makes is guarded by its attempt number, so a worker that lost the lease
(silent past SHIFTSCORE_STALE_AFTER, then taken over) can no longer write. Work
started `max_attempts` times without finishing ends `invalid` instead of coming back.
A second queue message for work that is held or finished does nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from db.models import Dataset, Model, before, utcnow


@dataclass(frozen=True)
class LeasedWork:
    """Where one kind of work keeps its lease: the row's table, its status while the work is open, the columns."""

    row: type[Model] | type[Dataset]
    open_status: str
    attempts: InstrumentedAttribute[int]
    worker: InstrumentedAttribute[str | None]
    heartbeat: InstrumentedAttribute[datetime | None]

    def silent_since(self, cutoff: datetime) -> Any:
        """The lease is free: never taken, or its holder's last beat is older than `cutoff`."""
        return or_(self.heartbeat.is_(None), self.heartbeat < cutoff)


VALIDATION = LeasedWork(Model, "validating", Model.validation_attempts, Model.validation_worker,
                        Model.validation_heartbeat_at)
INGESTION = LeasedWork(Dataset, "processing", Dataset.ingest_attempts, Dataset.ingest_worker,
                       Dataset.ingest_heartbeat_at)


@dataclass(frozen=True)
class Lease:
    """A worker's hold on one row's work: every write it makes names this attempt."""

    row_id: str
    attempt: int


def take(
    session: Session, work: LeasedWork, row_id: str, worker: str, stale_after: timedelta, max_attempts: int,
    give_up: Callable[[Any], dict[str, Any]],
) -> Lease | None:
    """Take the work if it is open and nobody live holds it; None if it is not ours to do.

    Work already started `max_attempts` times is ended instead: `give_up(row)` gives the
    values that make the row `invalid` (its error message, anything to release).
    """
    # A row another transaction is writing (its holder recording the outcome, which can take minutes for a
    # large dataset's arrays) is held: skipped rather than waited for, so this message ends at once.
    row = session.execute(
        select(work.row).where(work.row.id == row_id).with_for_update(key_share=True, skip_locked=True)
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if row is None or row.status != work.open_status:
        return None
    now = utcnow()
    cutoff = now - stale_after
    attempts = getattr(row, work.attempts.key)
    # Judged in the update itself: on SQLite nothing locks the row, and its holder may beat after the read above.
    free = [work.row.id == row_id, work.row.status == work.open_status, work.attempts == attempts,
            work.silent_since(cutoff)]
    # "fetch": the row in this session is refreshed from the database, not by comparing times in Python.
    sync = {"synchronize_session": "fetch"}
    if attempts >= max_attempts:
        session.execute(update(work.row).where(*free).values(status="invalid", **give_up(row)), execution_options=sync)
        return None
    taken = session.execute(
        update(work.row).where(*free).values({work.attempts: attempts + 1, work.worker: worker, work.heartbeat: now}),
        execution_options=sync,
    )
    if taken.rowcount != 1:
        session.rollback()
        return None
    return Lease(row_id, attempts + 1)


def held(work: LeasedWork, lease: Lease) -> list[Any]:
    """Conditions true while `lease` is still the holder's: guard every write of the work with them."""
    return [work.row.id == lease.row_id, work.row.status == work.open_status, work.attempts == lease.attempt]


def beat(session: Session, work: LeasedWork, lease: Lease) -> bool:
    """Show that the holder is alive; False once the lease is lost."""
    result = session.execute(update(work.row).where(*held(work, lease)).values({work.heartbeat: utcnow()}))
    return result.rowcount == 1


def unheld(session: Session, work: LeasedWork, cutoff: datetime) -> list[tuple[str, bool]]:
    """Open work nobody live holds, each with whether it has waited past `cutoff` (created and last beat before it).

    Work a live worker holds has no message in the queue, so it is not counted; work
    younger than `cutoff` still has its first message on the way.
    """
    rows = session.execute(
        select(work.row.id, work.row.created_at, work.heartbeat)
        .where(work.row.status == work.open_status, work.silent_since(cutoff))
        .order_by(work.row.created_at, work.row.id)
    ).all()
    return [(row_id, before(created, cutoff) and before(beaten, cutoff)) for row_id, created, beaten in rows]
