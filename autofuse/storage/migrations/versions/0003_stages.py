"""The staged search: each trial's stage (unimodal, fusion, finalist) and a low-fidelity flag
(a trial that reached its time limit and reports its best epoch so far).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    with op.batch_alter_table("autofuse_trials") as b:
        b.add_column(sa.Column("stage", sa.String(16)))
        b.add_column(sa.Column("low_fidelity", sa.Boolean))


def downgrade() -> None:
    with op.batch_alter_table("autofuse_trials") as b:
        b.drop_column("low_fidelity")
        b.drop_column("stage")
