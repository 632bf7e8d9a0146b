"""Alembic environment: the URL comes from SHIFTSCORE_DATABASE_URL via the settings."""

from __future__ import annotations

from alembic import context

from core.settings import get_settings
from db.models import Base
from db.session import make_engine

url = context.config.get_main_option("sqlalchemy.url") or get_settings().database_url
engine = make_engine(url)
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
