"""datasets: ingestion lease (attempts, worker, heartbeat), so the reconciler can re-send a lost ingestion

Revision ID: 0009_ingest_lease
Revises: 0001
Create Date: 2026-11-30
"""
from alembic import op
import sqlalchemy as sa

revision = '0009_ingest_lease'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Datasets processing at the upgrade start with no attempt and no holder: the reconciler re-sends them.
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ingest_attempts', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('ingest_worker', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('ingest_heartbeat_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.drop_column('ingest_heartbeat_at')
        batch_op.drop_column('ingest_worker')
        batch_op.drop_column('ingest_attempts')
