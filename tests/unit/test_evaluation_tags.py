"""`?tag=` filters and pages in SQL (issue 11): the tags of existing evaluations move to their own table."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from sqlalchemy.orm import Session

from api.http.schemas import EvaluationFilter
from api.services.evaluations import list_evaluations
from db.migrate import alembic_config, upgrade
from db.session import make_engine

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
EVALUATIONS = sa.table(
    "evaluations", *(sa.column(name) for name in (
        "id", "tenant_id", "model_id", "dataset_id", "sweep_key", "idempotency_key", "request_sha256", "status",
        "progress_done", "progress_total", "attempts", "cancel_requested")),
    sa.column("request", sa.JSON), sa.column("tags", sa.JSON), sa.column("created_at", sa.DateTime(timezone=True)),
)


def tags_of(i: int) -> list[str]:
    return (["nightly"] if i % 3 == 0 else []) + (["gpu", "gpu"] if i % 5 == 0 else [])


def test_tags_of_existing_evaluations_are_backfilled_and_paged_in_sql(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tags.sqlite3'}"
    command.upgrade(alembic_config(url), "0005")  # the schema before evaluation_tags
    rows = [{"id": f"e{i:03d}", "tenant_id": "t1" if i < 40 else "t2", "model_id": "m", "dataset_id": "d",
             "sweep_key": "k", "idempotency_key": None, "request_sha256": "s", "status": "queued",
             "progress_done": 0, "progress_total": 1, "attempts": 0, "cancel_requested": False,
             "request": {}, "tags": tags_of(i), "created_at": T0 + timedelta(minutes=i)} for i in range(50)]
    with sa.create_engine(url).begin() as connection:  # no foreign keys: only the evaluations matter here
        connection.execute(sa.insert(EVALUATIONS), rows)
    upgrade(url)

    engine = make_engine(url)
    with Session(engine) as session:
        expected = [f"e{i:03d}" for i in reversed(range(40)) if "nightly" in tags_of(i)]
        seen, cursor, pages = [], None, 0
        while True:
            page, cursor = list_evaluations(session, "t1", EvaluationFilter(tag="nightly", limit=4, cursor=cursor))
            assert len(page) <= 4
            seen += [row.id for row in page]
            pages += 1
            if cursor is None:
                break
        assert seen == expected and pages == 4  # 14 of them, newest first, in pages of 4
        gpu, _ = list_evaluations(session, "t1", EvaluationFilter(tag="gpu", limit=50))
        assert [row.id for row in gpu] == [f"e{i:03d}" for i in reversed(range(40)) if i % 5 == 0]
        other, _ = list_evaluations(session, "t2", EvaluationFilter(tag="nightly", limit=50))
        assert {row.id for row in other} == {f"e{i:03d}" for i in range(40, 50) if i % 3 == 0}
        assert list_evaluations(session, "t1", EvaluationFilter(tag="none", limit=50)) == ([], None)
    engine.dispose()
