"""example_results: the probability the model gave the true label at the worst shift

Revision ID: 0009_i16_examples
Revises: 0001
Create Date: 2026-11-29
"""
from alembic import op
import sqlalchemy as sa

revision = '0009_i16_examples'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Null for evaluations recorded before it was measured (their worst shift was the first wrong one).
    with op.batch_alter_table('example_results', schema=None) as batch_op:
        batch_op.add_column(sa.Column('worst_probability', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('example_results', schema=None) as batch_op:
        batch_op.drop_column('worst_probability')
