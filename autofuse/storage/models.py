"""autofuse's SQL tables (SQLAlchemy models): studies, trials, epochs. Kept apart from the
history store so that the storage check (``storage/guard.py``) can read their columns without
importing the store that calls it."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import orm


class Base(orm.DeclarativeBase):
    pass


class StudyModel(Base):
    __tablename__ = "autofuse_studies"
    id = sa.Column(sa.Integer, primary_key=True)
    name = sa.Column(sa.String(256), nullable=False, unique=True)
    dataset_fingerprint = sa.Column(sa.String(64))
    dataset_info = sa.Column(sa.JSON)
    dataset_path = sa.Column(sa.Text)
    space = sa.Column(sa.JSON)
    metric = sa.Column(sa.String(64))
    direction = sa.Column(sa.String(16))
    created_at = sa.Column(sa.DateTime)
    mlflow_experiment_id = sa.Column(sa.String(64))
    mlflow_parent_run_id = sa.Column(sa.String(64))


class TrialModel(Base):
    __tablename__ = "autofuse_trials"
    __table_args__ = (
        sa.UniqueConstraint("study_id", "number", name="uq_autofuse_trials_study_number"),
    )
    id = sa.Column(sa.Integer, primary_key=True)
    study_id = sa.Column(
        sa.Integer, sa.ForeignKey("autofuse_studies.id", ondelete="CASCADE"), nullable=False
    )
    number = sa.Column(sa.Integer, nullable=False)
    status = sa.Column(sa.String(16), nullable=False)
    reason = sa.Column(sa.String(32))
    error = sa.Column(sa.Text)
    baseline = sa.Column(sa.String(64))
    family = sa.Column(sa.String(64))
    method = sa.Column(sa.String(64))
    point = sa.Column(sa.String(16))
    encoders = sa.Column(sa.JSON)
    spec = sa.Column(sa.JSON)
    value = sa.Column(sa.Float)
    val_metrics = sa.Column(sa.JSON)
    test_metrics = sa.Column(sa.JSON)
    n_params = sa.Column(sa.BigInteger)
    latency_ms = sa.Column(sa.Float)
    train_time_s = sa.Column(sa.Float)
    epochs_run = sa.Column(sa.Integer)
    best_epoch = sa.Column(sa.Integer)
    device = sa.Column(sa.String(64))
    worker = sa.Column(sa.String(256))
    started_at = sa.Column(sa.DateTime)
    finished_at = sa.Column(sa.DateTime)
    retry_of = sa.Column(sa.Integer)
    resumed_from_epoch = sa.Column(sa.Integer)
    mlflow_run_id = sa.Column(sa.String(64))
    cache_hits = sa.Column(sa.Integer)
    cache_misses = sa.Column(sa.Integer)
    stage = sa.Column(sa.String(16))
    low_fidelity = sa.Column(sa.Boolean)
    peak_gpu_mb = sa.Column(sa.Float)
    #: how ``value`` was measured: a K-fold selection estimate (per-fold scores, losses)
    selection = sa.Column(sa.JSON)


class EpochModel(Base):
    __tablename__ = "autofuse_epochs"
    __table_args__ = (
        sa.UniqueConstraint("trial_id", "epoch", name="uq_autofuse_epochs_trial_epoch"),
    )
    id = sa.Column(sa.Integer, primary_key=True)
    trial_id = sa.Column(
        sa.Integer, sa.ForeignKey("autofuse_trials.id", ondelete="CASCADE"), nullable=False
    )
    epoch = sa.Column(sa.Integer, nullable=False)
    metrics = sa.Column(sa.JSON)
