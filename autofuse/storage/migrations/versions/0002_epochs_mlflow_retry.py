"""Per-epoch curves, MLflow run ids, retries and cache counters.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "autofuse_epochs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "trial_id",
            sa.Integer,
            sa.ForeignKey("autofuse_trials.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("metrics", sa.JSON),
        sa.UniqueConstraint("trial_id", "epoch", name="uq_autofuse_epochs_trial_epoch"),
    )
    with op.batch_alter_table("autofuse_studies") as b:
        b.add_column(sa.Column("dataset_path", sa.Text))
        b.add_column(sa.Column("mlflow_experiment_id", sa.String(64)))
        b.add_column(sa.Column("mlflow_parent_run_id", sa.String(64)))
    with op.batch_alter_table("autofuse_trials") as b:
        b.add_column(sa.Column("best_epoch", sa.Integer))
        b.add_column(sa.Column("retry_of", sa.Integer))
        b.add_column(sa.Column("resumed_from_epoch", sa.Integer))
        b.add_column(sa.Column("mlflow_run_id", sa.String(64)))
        b.add_column(sa.Column("cache_hits", sa.Integer))
        b.add_column(sa.Column("cache_misses", sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("autofuse_trials") as b:
        for c in (
            "cache_misses",
            "cache_hits",
            "mlflow_run_id",
            "resumed_from_epoch",
            "retry_of",
            "best_epoch",
        ):
            b.drop_column(c)
    with op.batch_alter_table("autofuse_studies") as b:
        for c in ("mlflow_parent_run_id", "mlflow_experiment_id", "dataset_path"):
            b.drop_column(c)
    op.drop_table("autofuse_epochs")
