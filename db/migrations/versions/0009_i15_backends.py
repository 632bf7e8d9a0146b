"""models.runtime (the backend and batch size chosen at validation), evaluations.runtime (what ran)

Revision ID: 0009_i15_backends
Revises: 0001
Create Date: 2026-11-29
"""
from alembic import op
import sqlalchemy as sa

revision = '0009_i15_backends'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.add_column(sa.Column('runtime', sa.JSON(), nullable=True))
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('runtime', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.drop_column('runtime')
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.drop_column('runtime')
