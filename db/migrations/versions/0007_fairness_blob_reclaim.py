"""models, datasets: a deleted object's blob reference may be cleared once its blob is reclaimed; indexes to find references

Revision ID: 0007_fairness
Revises: 0001
Create Date: 2026-11-29
"""
from alembic import op
import sqlalchemy as sa

revision = '0007_fairness'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.alter_column('sha256', existing_type=sa.String(length=64), nullable=True)
        batch_op.create_index('ix_models_sha256', ['sha256'], unique=False)
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.alter_column('images_blob', existing_type=sa.String(length=64), nullable=True)
        batch_op.alter_column('targets_blob', existing_type=sa.String(length=64), nullable=True)
        batch_op.create_index('ix_datasets_images_blob', ['images_blob'], unique=False)
        batch_op.create_index('ix_datasets_targets_blob', ['targets_blob'], unique=False)


def downgrade() -> None:
    # Rows whose blob was reclaimed cannot point at it again: they are removed with the constraint back on.
    op.execute("DELETE FROM models WHERE sha256 IS NULL AND NOT EXISTS "
               "(SELECT 1 FROM evaluations WHERE evaluations.model_id = models.id)")
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.drop_index('ix_datasets_targets_blob')
        batch_op.drop_index('ix_datasets_images_blob')
        batch_op.alter_column('targets_blob', existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column('images_blob', existing_type=sa.String(length=64), nullable=False)
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.drop_index('ix_models_sha256')
        batch_op.alter_column('sha256', existing_type=sa.String(length=64), nullable=False)
