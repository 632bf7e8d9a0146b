"""models: validation lease (attempts, worker, heartbeat) and the batch speed measured in the sandbox

Revision ID: 0006_sandbox
Revises: 0001
Create Date: 2026-11-29
"""
from alembic import op
import sqlalchemy as sa

revision = '0006_sandbox'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.add_column(sa.Column('validation_attempts', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('validation_worker', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('validation_heartbeat_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('seconds_per_image', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.drop_column('seconds_per_image')
        batch_op.drop_column('validation_heartbeat_at')
        batch_op.drop_column('validation_worker')
        batch_op.drop_column('validation_attempts')
