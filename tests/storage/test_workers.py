"""Parallel workers on one study (SQLite and the real PostgreSQL), a worker killed mid-study,
and per-trial faults (NaN, out-of-memory, time limit) that end as pruned while the study goes on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from history_check import assert_consistent

from autofuse.errors import ConfigError
from autofuse.storage.history import HistoryStore
from autofuse.study import search
from autofuse.testing.faults import InjectFaults

HERE = Path(__file__).parent
TINY_ALL = str(HERE.parent / "spaces" / "tiny_all.yaml")
SLOW = str(HERE.parent / "spaces" / "slow_epochs.yaml")


@pytest.fixture
def pg_url():
    from tests_storage_db import fresh_database

    url, drop = fresh_database("postgresql")
    yield url
    drop()


def _check_study(url: str, study: str, n: int, mlflow_uri: str) -> None:
    st = optuna.load_study(study_name=study, storage=url)
    trials = st.get_trials(deepcopy=False)
    finished = [
        t
        for t in trials
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ]
    assert len(finished) == n, [(t.number, t.state) for t in trials]
    assert len({t.number for t in trials}) == len(trials)  # unique trial numbers
    # no parameter set run twice (the enqueued baselines run once each)
    keys = [json.dumps(t.params, sort_keys=True) for t in finished]
    assert len(set(keys)) == len(keys)
    baselines = [t.user_attrs["baseline"] for t in finished if "baseline" in t.user_attrs]
    assert len(baselines) == len(set(baselines))
    # nothing failed, and no storage trouble ("database is locked", ...)
    assert not [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    workers = {t.user_attrs.get("worker") for t in finished}
    assert len(workers) >= 2, workers
    # every trial is in the SQL history and in MLflow
    recs = {r.number: r for r in HistoryStore(url).trials(study)}
    assert {t.number for t in finished} <= set(recs)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name(study)
    runs = {r.info.run_id for r in client.search_runs([exp.experiment_id], max_results=1000)}
    for t in finished:
        assert recs[t.number].mlflow_run_id in runs, f"trial {t.number} missing in MLflow"
    assert_consistent(url, study, mlflow_uri)


@pytest.mark.slow
def test_four_workers_on_sqlite(demo_dataset, tmp_path):
    url = f"sqlite:///{tmp_path / 'trials' / 'autofuse.db'}"
    mlflow_uri = f"sqlite:///{tmp_path / 'trials' / 'mlflow.db'}"
    search(
        demo_dataset,
        study="w4",
        trials=16,
        space=TINY_ALL,
        workdir=tmp_path,
        progress=False,
        workers=4,
        devices="cpu",
        mlflow_uri=mlflow_uri,
        report=False,
    )
    _check_study(url, "w4", 16, mlflow_uri)


@pytest.mark.slow
def test_four_workers_on_postgresql_with_mlflow_server(
    demo_dataset, tmp_path, pg_url, mlflow_server
):
    search(
        demo_dataset,
        study="w4pg",
        trials=16,
        space=TINY_ALL,
        workdir=tmp_path,
        progress=False,
        workers=4,
        devices="cpu",
        storage=pg_url,
        mlflow_uri=mlflow_server,
        report=False,
    )
    _check_study(pg_url, "w4pg", 16, mlflow_server)


def test_sqlite_refuses_many_workers(demo_dataset, tmp_path):
    with pytest.raises(ConfigError, match="SQLite is not safe"):
        search(
            demo_dataset,
            study="many",
            trials=2,
            space=TINY_ALL,
            workdir=tmp_path,
            progress=False,
            workers=8,
            devices="cpu",
            mlflow_uri="off",
        )
    assert not (tmp_path / "trials" / "many").exists()


@pytest.mark.slow
def test_killing_one_of_several_workers(demo_dataset, tmp_path):
    """Two `autofuse worker` processes join a study; one is killed; the other finishes it."""
    url = f"sqlite:///{tmp_path / 'trials' / 'autofuse.db'}"
    # create the study (1 finished trial) so that workers can join it
    search(
        demo_dataset,
        study="kw",
        trials=1,
        space=SLOW,
        workdir=tmp_path,
        progress=False,
        mlflow_uri="off",
        heartbeat_interval=1,
        report=False,
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "autofuse.cli",
        "worker",
        "--study",
        "kw",
        "--storage",
        url,
        "--trials",
        "6",
        "--mlflow-uri",
        "off",
        "--workdir",
        str(tmp_path),
        "--device",
        "cpu",
    ]
    a = subprocess.Popen(
        cmd + ["--seed", "11"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    b = subprocess.Popen(
        cmd + ["--seed", "12"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    hs = HistoryStore(url)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 240:  # wait until worker a runs a trial
        mine = [
            r
            for r in hs.trials("kw")
            if r.status == "RUNNING" and r.worker and r.worker.endswith(f":{a.pid}")
        ]
        if mine:
            break
        time.sleep(0.3)
    else:
        pytest.fail("worker a never started a trial")
    os.kill(a.pid, signal.SIGKILL)
    a.wait(timeout=30)
    out = b.communicate(timeout=600)[1]
    assert b.returncode == 0, out[-3000:]
    st = optuna.load_study(study_name="kw", storage=url)
    finished = st.get_trials(
        states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    )
    assert len(finished) == 6
    killed = mine[0].number
    recs = {r.number: r for r in HistoryStore(url).trials("kw")}
    assert recs[killed].status == "FAIL" and recs[killed].reason == "killed"
    assert any(r.retry_of == killed for r in recs.values())
    assert_consistent(url, "kw")


def test_injected_faults_end_as_pruned_with_reason(demo_dataset, tmp_path):
    # trials 0 and 1 are the enqueued baselines; inject into 2, 3, 4 and 5
    faults = InjectFaults({2: "diverged", 3: "oom", 4: "timeout", 5: "invalid"})
    res = search(
        demo_dataset,
        study="faults",
        trials=7,
        space=str(HERE.parent / "spaces" / "tiny.yaml"),
        workdir=tmp_path,
        progress=False,
        mlflow_uri="off",
        trial_timeout=6.0,
        max_faults=10,
        report=False,
        hooks=[faults],
    )
    url = f"sqlite:///{tmp_path / 'trials' / 'autofuse.db'}"
    recs = {r.number: r for r in HistoryStore(url).trials("faults")}
    assert (recs[2].status, recs[2].reason) == ("PRUNED", "diverged")
    assert (recs[3].status, recs[3].reason) == ("PRUNED", "oom")
    # a trial that reaches its time limit after an epoch is a low-fidelity result, not a fault
    assert (recs[4].status, recs[4].reason, recs[4].low_fidelity) == ("COMPLETE", "timeout", True)
    assert (recs[5].status, recs[5].reason) == ("PRUNED", "invalid")
    assert recs[6].status == "COMPLETE"  # the study went on
    for reason in ("diverged", "oom", "invalid"):
        assert res.summary["pruned_reasons"].get(reason, 0) >= 1
    assert_consistent(url, "faults")


def test_worker_stops_after_consecutive_faults(demo_dataset, tmp_path):
    from autofuse.workers import WorkerStopped

    faults = InjectFaults({2: "invalid", 3: "invalid", 4: "invalid"})
    with pytest.raises(WorkerStopped, match="3 consecutive faulty trials"):
        search(
            demo_dataset,
            study="stop",
            trials=8,
            space=str(HERE.parent / "spaces" / "tiny.yaml"),
            workdir=tmp_path,
            progress=False,
            mlflow_uri="off",
            max_faults=3,
            report=False,
            hooks=[faults],
        )
    assert_consistent(f"sqlite:///{tmp_path / 'trials' / 'autofuse.db'}", "stop")
