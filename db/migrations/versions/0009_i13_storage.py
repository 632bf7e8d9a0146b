"""blobs in fixed-size chunk rows (no 1 GB ceiling); datasets ingested by a worker (status, upload, names, paths)

Revision ID: 0009_i13_storage
Revises: 0001
Create Date: 2026-11-29
"""
from alembic import op
import sqlalchemy as sa

revision = '0009_i13_storage'
down_revision = '0001'
branch_labels = None
depends_on = None

_COUNTS = ('num_samples', 'channels', 'height', 'width', 'num_classes', 'max_label')


def upgrade() -> None:
    op.create_table(
        'blob_chunks',
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('data', sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(['sha256'], ['blobs.sha256'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('sha256', 'seq'),
    )
    # Blobs stored before stay in `data` and stay readable (db/blobs.py reads either form).
    with op.batch_alter_table('blobs', schema=None) as batch_op:
        batch_op.alter_column('data', existing_type=sa.LargeBinary(), nullable=True)
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('status', sa.String(length=20), nullable=False, server_default='ready'))
        batch_op.add_column(sa.Column('error', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('upload_blob', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('preprocess', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('filename', sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column('class_names', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('files_blob', sa.String(length=64), nullable=True))
        batch_op.create_foreign_key('fk_datasets_upload_blob', 'blobs', ['upload_blob'], ['sha256'])
        batch_op.create_foreign_key('fk_datasets_files_blob', 'blobs', ['files_blob'], ['sha256'])
        batch_op.create_index('ix_datasets_upload_blob', ['upload_blob'], unique=False)
        batch_op.create_index('ix_datasets_files_blob', ['files_blob'], unique=False)
        for column in _COUNTS:
            batch_op.alter_column(column, existing_type=sa.Integer(), nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM datasets WHERE status <> 'ready'")
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        for column in _COUNTS:
            batch_op.alter_column(column, existing_type=sa.Integer(), nullable=False)
        batch_op.drop_index('ix_datasets_files_blob')
        batch_op.drop_index('ix_datasets_upload_blob')
        batch_op.drop_constraint('fk_datasets_files_blob', type_='foreignkey')
        batch_op.drop_constraint('fk_datasets_upload_blob', type_='foreignkey')
        for column in ('files_blob', 'class_names', 'filename', 'preprocess', 'upload_blob', 'error', 'status'):
            batch_op.drop_column(column)
    # Chunked blobs cannot go back into one value (past 1 GB they do not fit): a step back loses them.
    op.drop_table('blob_chunks')

