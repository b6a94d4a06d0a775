"""Contract suite for the SQL trial history, run over every backend (Optuna's storage-test idea):
SQLite, the real PostgreSQL server and the real MariaDB server of this machine kind."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa

from autofuse.errors import ConfigError
from autofuse.storage.history import HistoryStore, head_revision, upgrade_url

HERE = Path(__file__).parent


def test_fresh_database_gets_current_schema(url):
    hs = HistoryStore(url)
    assert hs.current_revision() == head_revision()
    HistoryStore(url)  # opening again is fine


def test_record_and_read_back_a_study(url):
    hs = HistoryStore(url)
    hs.upsert_study(
        "s",
        dataset_fingerprint="f" * 64,
        dataset_info={"name": "d", "rows": 3},
        space={"name": "fast"},
        metric="accuracy",
        direction="maximize",
        dataset_path="/x",
    )
    spec = {
        "fusion": {"family": "attention", "method": "inter_cross"},
        "encoders": {"a": {"name": "x"}},
    }
    hs.record_trial(
        "s",
        0,
        status="RUNNING",
        family="attention",
        method="inter_cross",
        point="late",
        encoders={"a": "image.small_cnn/scratch"},
        spec=spec,
        device="cpu",
        worker="h:1",
        baseline="cross_attention",
    )
    for e in (1, 2, 3):
        hs.log_epoch("s", 0, e, {"accuracy": 0.5 + e / 10, "train_loss": 1.0 / e})
    hs.log_epoch("s", 0, 3, {"accuracy": 0.85, "train_loss": 0.3})  # rewriting an epoch replaces it
    hs.record_trial(
        "s",
        0,
        status="COMPLETE",
        value=0.85,
        val_metrics={"accuracy": 0.85},
        test_metrics={"accuracy": 0.8, "macro_f1": 0.79},
        n_params=12345,
        latency_ms=0.5,
        train_time_s=2.5,
        epochs_run=3,
        best_epoch=3,
        mlflow_run_id="abc",
    )
    hs.record_trial(
        "s", 1, status="PRUNED", reason="diverged", error="non-finite loss", family="graph"
    )
    st = hs.study("s")
    assert (
        st.metric == "accuracy"
        and st.dataset_info == {"name": "d", "rows": 3}
        and st.dataset_path == "/x"
    )
    t0, t1 = hs.trials("s")
    assert (t0.number, t0.status, t0.value, t0.n_params) == (0, "COMPLETE", 0.85, 12345)
    assert t0.spec == spec and t0.encoders == {"a": "image.small_cnn/scratch"}
    assert t0.test_metrics["macro_f1"] == 0.79 and t0.baseline == "cross_attention"
    assert [h["epoch"] for h in t0.history] == [1, 2, 3] and t0.history[-1]["accuracy"] == 0.85
    assert (t1.status, t1.reason, t1.history) == ("PRUNED", "diverged", [])
    assert [s.name for s in hs.studies()] == ["s"]
    with pytest.raises(ValueError):
        hs.record_trial("s", 2, bogus=1)


def test_non_finite_metrics_are_stored_as_null(url):
    """A diverged trial's NaN / inf metrics: strict JSON (PostgreSQL refuses a bare NaN)."""
    hs = HistoryStore(url)
    hs.upsert_study("s", metric="accuracy", direction="maximize")
    hs.record_trial(
        "s", 0, status="PRUNED", val_metrics={"loss": float("nan"), "accuracy": 0.5},
        test_metrics={"loss": float("inf")},
    )  # fmt: skip
    (t,) = hs.trials("s")
    assert t.val_metrics == {"loss": None, "accuracy": 0.5}
    assert t.test_metrics == {"loss": None}


def test_two_stores_on_one_database_share_records(url):
    a, b = HistoryStore(url), HistoryStore(url)
    a.upsert_study("shared", metric="rmse", direction="minimize")
    b.record_trial("shared", 5, status="COMPLETE", value=1.5)
    assert [t.number for t in a.trials("shared")] == [5]


def test_old_schema_is_refused_until_upgraded(url):
    from alembic import command

    from autofuse.storage.history import _alembic_config

    hs = HistoryStore(url)
    hs.upsert_study("old")
    with hs.engine.begin() as c:
        command.downgrade(_alembic_config(c), "0001")
    with pytest.raises(ConfigError, match="autofuse db upgrade"):
        HistoryStore(url)
    before, after = upgrade_url(url)
    assert (before, after) == ("0001", head_revision())
    assert HistoryStore(url).study("old") is not None


def test_unreachable_server_is_a_clear_error():
    with pytest.raises(ConfigError, match="cannot connect"):
        HistoryStore("postgresql+psycopg2://postgres@127.0.0.1:1/none")


def test_database_from_first_schema_version_upgrades_and_resumes(tmp_path):
    """tests/storage/v1_autofuse.db was written by schema 0001 (a 3-trial study 'legacy' on
    tests/data/good); it must be refused, upgraded, then resumed."""
    from autofuse.study import search

    (tmp_path / "trials").mkdir()
    db = tmp_path / "trials" / "autofuse.db"
    shutil.copyfile(HERE / "v1_autofuse.db", db)
    url = f"sqlite:///{db}"
    good = HERE.parent / "data" / "good"
    space = HERE.parent / "spaces" / "tiny.yaml"
    with sa.create_engine(url).connect() as c:  # schema 0001: read it with plain SQL
        before = [
            tuple(r)
            for r in c.execute(
                sa.text("SELECT number, status, value FROM autofuse_trials ORDER BY number")
            )
        ]
    assert len(before) == 3
    with pytest.raises(ConfigError, match="autofuse db upgrade"):
        search(
            good,
            study="legacy",
            trials=4,
            space=space,
            workdir=tmp_path,
            progress=False,
            mlflow_uri="off",
        )
    assert upgrade_url(url) == ("0001", head_revision())
    search(
        good,
        study="legacy",
        trials=4,
        space=space,
        workdir=tmp_path,
        progress=False,
        mlflow_uri="off",
    )
    after = HistoryStore(url).trials("legacy")
    assert [(t.number, t.status, t.value) for t in after[:3]] == before
    assert len(after) == 4 and after[3].status in ("COMPLETE", "PRUNED") and after[3].history
