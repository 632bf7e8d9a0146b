"""models: a version per (tenant, name), numbered from 1 in upload order; unique together

Revision ID: 0008_pipeline
Revises: 0001
Create Date: 2026-11-29
"""
from alembic import op
import sqlalchemy as sa

revision = '0008_pipeline'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.add_column(sa.Column('version', sa.Integer(), nullable=False, server_default='1'))
    # Models uploaded before versions existed: number each name's copies in upload order.
    op.execute(
        "UPDATE models SET version = (SELECT COUNT(*) FROM models AS older "
        "WHERE older.tenant_id = models.tenant_id AND older.name = models.name "
        "AND (older.created_at < models.created_at "
        "OR (older.created_at = models.created_at AND older.id <= models.id)))"
    )
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.create_unique_constraint('uq_models_tenant_name_version', ['tenant_id', 'name', 'version'])


def downgrade() -> None:
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.drop_constraint('uq_models_tenant_name_version', type_='unique')
        batch_op.drop_column('version')
