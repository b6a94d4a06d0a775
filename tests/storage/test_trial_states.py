"""One state per trial: whatever ends a trial ends its record in Optuna, in autofuse's tables and
in MLflow alike; records an older autofuse left RUNNING are repaired at start-up; ``autofuse
studies`` never calls a finished study running; Ctrl-C prints one line per running trial and a
summary, no traceback; ``mlflow sync`` closes the parent run and registers the best model once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from history_check import assert_consistent, history_problems

from autofuse.cli import main
from autofuse.leaderboard import studies
from autofuse.storage.history import HistoryStore
from autofuse.study import search
from autofuse.trial import TrialExecution, TrialHook

HERE = Path(__file__).parent
GOOD = HERE.parent / "data" / "good"
TINY = str(HERE.parent / "spaces" / "tiny.yaml")
SLOW = str(HERE.parent / "spaces" / "slow_epochs.yaml")


@dataclass
class FailAfterRecord(TrialHook):
    """Trial ``number`` raises after its final record was written (a bug in a hook, a disk
    that fills up while the checkpoint is discarded): Optuna fails the trial."""

    number: int

    def on_trial_end(self, ex: TrialExecution, status: str, fields: dict) -> None:
        if ex.number == self.number and status == "COMPLETE":
            raise RuntimeError("injected: failure after the trial's record was written")


def _urls(tmp_path: Path) -> tuple[str, str]:
    return (
        f"sqlite:///{tmp_path / 'trials' / 'autofuse.db'}",
        f"sqlite:///{tmp_path / 'trials' / 'mlflow.db'}",
    )


def test_error_after_the_record_fails_the_trial_everywhere(tmp_path):
    url, mlflow_uri = _urls(tmp_path)
    search(
        GOOD,
        study="late",
        trials=3,
        space=TINY,
        workdir=tmp_path,
        progress=False,
        mlflow_uri=mlflow_uri,
        report=False,
        hooks=[FailAfterRecord(1)],
    )
    recs = {r.number: r for r in HistoryStore(url).trials("late")}
    assert (recs[1].status, recs[1].reason) == ("FAIL", "error")
    assert "injected" in recs[1].error
    st = optuna.load_study(study_name="late", storage=url)
    assert st.trials[1].state == optuna.trial.TrialState.FAIL
    assert_consistent(url, "late", mlflow_uri)


def test_old_running_records_are_repaired_at_start_up(tmp_path):
    """An older autofuse left a failed trial RUNNING in autofuse_trials: `autofuse studies`
    still says idle, and the next search (or worker) repairs the record, and its MLflow run."""
    url, _ = _urls(tmp_path)
    common = dict(
        study="old", space=TINY, workdir=tmp_path, progress=False, mlflow_uri="off", report=False
    )
    search(GOOD, trials=2, **common)
    # what an older autofuse left behind: Optuna failed trial 2, its record stayed RUNNING
    st = optuna.load_study(study_name="old", storage=url)
    trial = st.ask()
    st.tell(trial, state=optuna.trial.TrialState.FAIL)
    HistoryStore(url).record_trial("old", trial.number, status="RUNNING")
    assert history_problems(url, "old") == [
        f"trial {trial.number}: FAIL in Optuna, RUNNING in autofuse"
    ]
    (row,) = studies(storage=url)
    assert (row["status"], row["running"], row["failed"]) == ("idle", 0, 1)

    search(GOOD, trials=3, **common)  # resumes: reconciles at start-up
    rec = {r.number: r for r in HistoryStore(url).trials("old")}[trial.number]
    assert (rec.status, rec.reason) == ("FAIL", "killed")
    assert_consistent(url, "old")


# ---- Ctrl-C ----------------------------------------------------------------------------------

# `autofuse search` with a HoldTrial hook: trial 0 waits after its epoch-1 checkpoint until the
# test interrupts it (no race with the machine's load)
HELD_CLI = """
import functools, sys
import autofuse.study
from autofuse.testing.faults import HoldTrial
hold = HoldTrial(marker=sys.argv[1], number=0, epoch=1, timeout_s=300)
autofuse.study.search = functools.partial(autofuse.study.search, hooks=[hold])
from autofuse.cli import main
sys.argv = ["autofuse", *sys.argv[2:]]
main()
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_prints_one_line_per_trial_and_a_summary(tmp_path, sig):
    url, mlflow_uri = _urls(tmp_path)
    driver, marker = tmp_path / "held_cli.py", tmp_path / "held"
    driver.write_text(HELD_CLI)
    cmd = [
        sys.executable,
        str(driver),
        str(marker),
        "search",
        str(GOOD),
        "--study",
        "stop",
        "--trials",
        "3",
        "--space",
        SLOW,
        "--mlflow-uri",
        mlflow_uri,
        "--no-progress",
        "--checkpoint-every",
        "0",
        "--device",
        "cpu",
        "--workdir",
        str(tmp_path),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    t0 = time.monotonic()
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() - t0 < 300, "trial 0 never reached its epoch-1 checkpoint"
        time.sleep(0.1)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert [ln for ln in lines if "interrupted after epoch" in ln] == [
        "WARNING autofuse.trial: trial 0 interrupted after epoch 1; queued to resume"
    ], err
    summary = [ln for ln in lines if "stopped:" in ln]
    assert len(summary) == 1 and "1 interrupted trial(s) queued to resume" in summary[0], err
    assert lines[-1] == "interrupted", err
    assert len(lines) <= 6, err  # no wall of text
    recs = {r.number: r for r in HistoryStore(url).trials("stop")}
    assert (recs[0].status, recs[0].reason) == ("FAIL", "interrupted")
    assert_consistent(url, "stop", mlflow_uri)  # FAIL / FAIL / KILLED
    st = optuna.load_study(study_name="stop", storage=url)
    queued = [t for t in st.trials if t.state == optuna.trial.TrialState.WAITING]
    assert [t.user_attrs["retry_of"] for t in queued if "retry_of" in t.user_attrs] == [0]


# ---- mlflow sync -----------------------------------------------------------------------------


def _sync(tmp_path: Path, mlflow_uri: str):
    args = ["mlflow", "sync", "--study", "later", "--mlflow-uri", mlflow_uri]
    r = CliRunner().invoke(main, [*args, "--workdir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    return r.output


def test_mlflow_sync_closes_the_parent_run_and_registers_the_best_model_once(tmp_path):
    from mlflow.tracking import MlflowClient  # a test of MLflow: imported where it is used

    url, mlflow_uri = _urls(tmp_path)
    res = search(
        GOOD,
        study="later",
        trials=2,
        space=TINY,
        workdir=tmp_path,
        progress=False,
        mlflow_uri="off",
        report=False,
    )
    assert res.summary["best_trial"] is not None
    assert "2 MLflow run(s) created" in _sync(tmp_path, mlflow_uri)
    client = MlflowClient(mlflow_uri, registry_uri=mlflow_uri)
    exp = client.get_experiment_by_name("later")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`autofuse.role` = 'study'")
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["autofuse.best_model_key"] == f"trial:{res.summary['best_trial']}"
    assert "best_val_accuracy" in parent.data.metrics
    assert len(client.search_model_versions("name='later'")) == 1
    assert_consistent(url, "later", mlflow_uri)

    assert "0 MLflow run(s) created" in _sync(tmp_path, mlflow_uri)  # idempotent
    assert len(client.search_model_versions("name='later'")) == 1
    (parent,) = client.search_runs([exp.experiment_id], "tags.`autofuse.role` = 'study'")
    assert parent.info.status == "FINISHED"
