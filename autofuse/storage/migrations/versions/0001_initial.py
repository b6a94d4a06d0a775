"""First schema: studies and trials.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "autofuse_studies",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(256), nullable=False, unique=True),
        sa.Column("dataset_fingerprint", sa.String(64)),
        sa.Column("dataset_info", sa.JSON),
        sa.Column("space", sa.JSON),
        sa.Column("metric", sa.String(64)),
        sa.Column("direction", sa.String(16)),
        sa.Column("created_at", sa.DateTime),
    )
    op.create_table(
        "autofuse_trials",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "study_id",
            sa.Integer,
            sa.ForeignKey("autofuse_studies.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(32)),
        sa.Column("error", sa.Text),
        sa.Column("baseline", sa.String(64)),
        sa.Column("family", sa.String(64)),
        sa.Column("method", sa.String(64)),
        sa.Column("point", sa.String(16)),
        sa.Column("encoders", sa.JSON),
        sa.Column("spec", sa.JSON),
        sa.Column("value", sa.Float),
        sa.Column("val_metrics", sa.JSON),
        sa.Column("test_metrics", sa.JSON),
        sa.Column("n_params", sa.BigInteger),
        sa.Column("latency_ms", sa.Float),
        sa.Column("train_time_s", sa.Float),
        sa.Column("epochs_run", sa.Integer),
        sa.Column("device", sa.String(64)),
        sa.Column("worker", sa.String(256)),
        sa.Column("started_at", sa.DateTime),
        sa.Column("finished_at", sa.DateTime),
        sa.UniqueConstraint("study_id", "number", name="uq_autofuse_trials_study_number"),
    )


def downgrade() -> None:
    op.drop_table("autofuse_trials")
    op.drop_table("autofuse_studies")
