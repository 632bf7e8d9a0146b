"""webhook delivery state on evaluations

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-25
"""
from alembic import op
import sqlalchemy as sa

revision = '0003'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('webhook_url', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('webhook_attempts', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('webhook_next_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('webhook_delivered_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('webhook_error', sa.Text(), nullable=True))
        batch_op.create_index('ix_evaluations_webhook_pending', ['webhook_delivered_at', 'webhook_next_at'])


def downgrade() -> None:
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.drop_index('ix_evaluations_webhook_pending')
        batch_op.drop_column('webhook_error')
        batch_op.drop_column('webhook_delivered_at')
        batch_op.drop_column('webhook_next_at')
        batch_op.drop_column('webhook_attempts')
        batch_op.drop_column('webhook_url')
