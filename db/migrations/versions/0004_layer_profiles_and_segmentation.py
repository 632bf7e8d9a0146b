"""layer profiles and segmentation results

Revision ID: 0004
Revises: 0001
Create Date: 2026-11-26
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('layer_results',
    sa.Column('evaluation_id', sa.String(length=36), nullable=False),
    sa.Column('layer_position', sa.Integer(), nullable=False),
    sa.Column('shift_position', sa.Integer(), nullable=False),
    sa.Column('layer', sa.String(length=300), nullable=False),
    sa.Column('kind', sa.String(length=100), nullable=False),
    sa.Column('shape', sa.JSON(), nullable=False),
    sa.Column('factor', sa.Integer(), nullable=True),
    sa.Column('dx', sa.Float(), nullable=False),
    sa.Column('dy', sa.Float(), nullable=False),
    sa.Column('equivariance_error', sa.Float(), nullable=True),
    sa.Column('invariance_error', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['evaluation_id'], ['evaluations.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('evaluation_id', 'layer_position', 'shift_position')
    )
    op.create_table('segmentation_results',
    sa.Column('evaluation_id', sa.String(length=36), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('dx', sa.Float(), nullable=False),
    sa.Column('dy', sa.Float(), nullable=False),
    sa.Column('n', sa.Integer(), nullable=False),
    sa.Column('pixels', sa.BigInteger(), nullable=False),
    sa.Column('correct', sa.BigInteger(), nullable=False),
    sa.Column('cells', sa.BigInteger(), nullable=False),
    sa.Column('agreed', sa.BigInteger(), nullable=False),
    sa.Column('equivariance_error', sa.Float(), nullable=True),
    sa.Column('miou', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['evaluation_id'], ['evaluations.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('evaluation_id', 'position')
    )


def downgrade() -> None:
    op.drop_table('segmentation_results')
    op.drop_table('layer_results')
