"""evaluation_tags: one row per tag, so GET /v1/evaluations?tag= filters and pages in SQL

Revision ID: 0006_bounds
Revises: 0005
Create Date: 2026-11-29
"""
from alembic import op
import sqlalchemy as sa

revision = '0006_bounds'
down_revision = '0005'
branch_labels = None
depends_on = None

_BATCH = 1000


def upgrade() -> None:
    tags = op.create_table(
        'evaluation_tags',
        sa.Column('evaluation_id', sa.String(length=36),
                  sa.ForeignKey('evaluations.id', ondelete='CASCADE'), primary_key=True),
        sa.Column('tag', sa.String(length=64), primary_key=True),
    )
    op.create_index('ix_evaluation_tags_tag', 'evaluation_tags', ['tag', 'evaluation_id'])
    # Existing evaluations keep their tags in evaluations.tags (a JSON list): copy them over.
    evaluations = sa.table('evaluations', sa.column('id', sa.String), sa.column('tags', sa.JSON))
    result = op.get_bind().execute(sa.select(evaluations.c.id, evaluations.c.tags))
    batch = []
    for evaluation_id, values in result:
        batch += [{'evaluation_id': evaluation_id, 'tag': tag}
                  for tag in dict.fromkeys(values or []) if isinstance(tag, str) and 0 < len(tag) <= 64]
        if len(batch) >= _BATCH:
            op.bulk_insert(tags, batch)
            batch = []
    if batch:
        op.bulk_insert(tags, batch)


def downgrade() -> None:
    op.drop_index('ix_evaluation_tags_tag', table_name='evaluation_tags')
    op.drop_table('evaluation_tags')
