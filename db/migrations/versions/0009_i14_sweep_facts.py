"""evaluations: num_samples and images_per_sample, stored at submission

Revision ID: 0009_i14_sweep_facts
Revises: 0001
Create Date: 2026-11-29
"""
import json

from alembic import op
import sqlalchemy as sa

revision = '0009_i14_sweep_facts'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('num_samples', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('images_per_sample', sa.Integer(), nullable=False, server_default='0'))
    # Evaluations submitted before: the samples from the request and the dataset, the views per
    # sample from the progress total that was their product.
    bind = op.get_bind()
    rows = bind.execute(sa.text(
        "SELECT evaluations.id, evaluations.request, evaluations.progress_total, datasets.num_samples "
        "FROM evaluations JOIN datasets ON datasets.id = evaluations.dataset_id"
    )).all()
    for evaluation_id, request, total, size in rows:
        request = json.loads(request) if isinstance(request, str) else request
        samples = min((request or {}).get('max_samples') or size, size)
        bind.execute(
            sa.text("UPDATE evaluations SET num_samples = :samples, images_per_sample = :per WHERE id = :id"),
            {"samples": samples, "per": total // max(1, samples), "id": evaluation_id},
        )


def downgrade() -> None:
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.drop_column('images_per_sample')
        batch_op.drop_column('num_samples')
