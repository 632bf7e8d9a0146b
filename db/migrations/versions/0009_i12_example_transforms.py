"""example_results: the angle, scale and brightness of each fragile sample's worst transform

Null for translation sweeps, whose worst transform is (dx, dy) alone, and for evaluations
recorded before they were kept.

Revision ID: 0009_i12_examples
Revises: 0001
Create Date: 2026-11-30
"""
from alembic import op
import sqlalchemy as sa

revision = '0009_i12_examples'
down_revision = '0001'
branch_labels = None
depends_on = None

COLUMNS = ('worst_angle', 'worst_scale', 'worst_brightness')


def upgrade() -> None:
    with op.batch_alter_table('example_results', schema=None) as batch_op:
        for name in COLUMNS:
            batch_op.add_column(sa.Column(name, sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('example_results', schema=None) as batch_op:
        for name in reversed(COLUMNS):
            batch_op.drop_column(name)
