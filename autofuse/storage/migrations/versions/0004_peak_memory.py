"""Peak GPU memory per trial (what the default number of workers per GPU is sized from).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    with op.batch_alter_table("autofuse_trials") as b:
        b.add_column(sa.Column("peak_gpu_mb", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("autofuse_trials") as b:
        b.drop_column("peak_gpu_mb")
