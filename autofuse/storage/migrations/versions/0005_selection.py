"""How a trial's value was measured (issue 19): a K-fold cross-validated selection estimate keeps
its per-fold scores and proper losses.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    with op.batch_alter_table("autofuse_trials") as b:
        b.add_column(sa.Column("selection", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("autofuse_trials") as b:
        b.drop_column("selection")
