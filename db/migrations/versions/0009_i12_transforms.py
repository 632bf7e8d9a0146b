"""shift_results: angle, scale and brightness of each row of a rotation/scale/brightness sweep

Null for translation-only sweeps, whose rows are (dx, dy) alone.

Revision ID: 0009_i12_transforms
Revises: 0001
Create Date: 2026-11-29
"""
from alembic import op
import sqlalchemy as sa

revision = '0009_i12_transforms'
down_revision = '0001'
branch_labels = None
depends_on = None

COLUMNS = ('angle', 'scale', 'brightness')


def upgrade() -> None:
    with op.batch_alter_table('shift_results', schema=None) as batch_op:
        for name in COLUMNS:
            batch_op.add_column(sa.Column(name, sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('shift_results', schema=None) as batch_op:
        for name in reversed(COLUMNS):
            batch_op.drop_column(name)
