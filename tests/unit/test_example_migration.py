"""Migration 0009_i12_examples: example rows keep their worst transform's angle, scale and brightness."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.orm import Session

from api.services.evaluations import _worst_transform
from db.migrate import alembic_config, upgrade
from db.models import Base, ExampleResult

COLUMNS = ["worst_angle", "worst_scale", "worst_brightness"]
OLD_ROW = {"evaluation_id": "e1", "rank": 0, "sample_index": 7, "label": 3, "clean_prediction": 3,
           "worst_prediction": 5, "worst_dx": 1.0, "worst_dy": -0.5, "worst_probability": 0.01, "flips": 4}


def columns(engine: sa.Engine) -> list[str]:
    return [column["name"] for column in sa.inspect(engine).get_columns("example_results")]


def test_the_columns_match_the_model_and_leave_on_downgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'examples.sqlite3'}"
    config = alembic_config(url)
    command.upgrade(config, "0009_i16_examples")  # example_results as it was, with worst_probability
    engine = sa.create_engine(url)  # SQLite without foreign keys: only this table matters here
    assert not set(COLUMNS) & set(columns(engine))
    upgrade(url)

    assert set(COLUMNS) <= set(columns(engine))
    with engine.connect() as connection:
        # The model and the migrated table agree on example_results (nothing for autogenerate to add).
        diffs = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert not [d for d in diffs if "example_results" in repr(d)], diffs
    with Session(engine) as session:
        # A translation sweep's row (or one recorded before the columns) leaves them null.
        session.add(ExampleResult(**OLD_ROW))
        session.add(ExampleResult(**{**OLD_ROW, "rank": 1, "worst_angle": 15.0, "worst_scale": 1.25,
                                     "worst_brightness": -0.1}))
        session.commit()
        old, new = session.get(ExampleResult, ("e1", 0)), session.get(ExampleResult, ("e1", 1))
        assert (old.worst_angle, old.worst_scale, old.worst_brightness) == (None, None, None)
        assert _worst_transform(old) == {"dx": 1, "dy": -0.5}
        assert _worst_transform(new) == {"dx": 1, "dy": -0.5, "angle": 15, "scale": 1.25, "brightness": -0.1}
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM example_results"))  # no evaluation row: a batch copy would fail

    command.downgrade(config, "0009_i12_examples@-1")
    assert not set(COLUMNS) & set(columns(engine)) and "worst_probability" in columns(engine)
    engine.dispose()
