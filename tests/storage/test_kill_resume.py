"""kill -9 a worker in the middle of a trial, resume the study, and check nothing was lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autofuse.storage.history import HistoryStore

SPACE = str(Path(__file__).parents[1] / "spaces" / "slow_epochs.yaml")
N_TRIALS = 5


def _cmd(dataset, work, mlflow_uri):
    return [
        sys.executable,
        "-m",
        "autofuse.cli",
        "search",
        str(dataset),
        "--study",
        "k",
        "--trials",
        str(N_TRIALS),
        "--space",
        SPACE,
        "--workdir",
        str(work),
        "--heartbeat",
        "1",
        "--no-progress",
        "--mlflow-uri",
        mlflow_uri,
    ]


#: the first run holds trial HELD after its 2nd epoch (its checkpoint on disk) until killed
HELD = 2

FIRST_RUN = """
import sys
from autofuse.study import search
from autofuse.testing.faults import HoldTrial
dataset, work, mlflow_uri, marker = sys.argv[1:]
search(dataset, study="k", trials={n}, space={space!r}, workdir=work, heartbeat_interval=1,
       progress=False, mlflow_uri=mlflow_uri, report=False, checkpoint_every_s=0,
       hooks=[HoldTrial(marker, number={held}, epoch=2)])
"""


def _wait_for_marker(marker: Path, proc, timeout: float = 300) -> int:
    """Wait until the hold hook says trial HELD is held mid-way (after epoch 2)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, "search ended before it could be killed"
        if marker.exists() and marker.read_text().strip():
            return int(marker.read_text())
        time.sleep(0.1)
    raise AssertionError("the held trial did not reach epoch 2 in time")


@pytest.mark.slow
def test_kill9_mid_trial_then_resume(demo_dataset, tmp_path):
    work = tmp_path / "w"
    url = f"sqlite:///{work / 'trials' / 'autofuse.db'}"
    mlflow_uri = f"sqlite:///{work / 'trials' / 'mlflow.db'}"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    marker = tmp_path / "held"
    script = FIRST_RUN.format(n=N_TRIALS, space=SPACE, held=HELD)
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(demo_dataset), str(work), mlflow_uri, str(marker)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        killed = _wait_for_marker(marker, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    hs = HistoryStore(url)
    finished_before = {r.number: r for r in hs.trials("k") if r.status in ("COMPLETE", "PRUNED")}
    assert killed == HELD
    assert sorted(finished_before) == list(range(HELD))  # the trials before it finished
    assert hs.trials("k")[killed].status == "RUNNING"  # nobody told the database

    time.sleep(5)  # > grace period (4 heartbeats of 1 s): the killed trial is now stale
    r = subprocess.run(
        _cmd(demo_dataset, work, mlflow_uri), env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]

    recs = {t.number: t for t in HistoryStore(url).trials("k")}
    # every trial finished before the kill is unchanged
    for n, before in finished_before.items():
        after = recs[n]
        assert (after.status, after.value, after.test_metrics, after.history) == (
            before.status,
            before.value,
            before.test_metrics,
            before.history,
        )
    # the killed attempt is recorded as killed, and retried exactly once
    assert (recs[killed].status, recs[killed].reason) == ("FAIL", "killed")
    retries = [t for t in recs.values() if t.retry_of == killed]
    assert len(retries) == 1
    retry = retries[0]
    assert retry.status == "COMPLETE"
    # ... resumed from its checkpoint: fewer epochs trained than from scratch
    assert retry.resumed_from_epoch is not None and retry.resumed_from_epoch >= 2
    assert retry.epochs_run == 8 and retry.epochs_run - retry.resumed_from_epoch < 8
    assert [h["epoch"] for h in retry.history] == list(range(1, 9))
    # the requested number of finished trials, no stray epoch checkpoints
    finished = [t for t in recs.values() if t.status in ("COMPLETE", "PRUNED")]
    assert len(finished) == N_TRIALS
    assert not list((work / "trials" / "k" / "running").glob("*.pt"))
    _check_mlflow(mlflow_uri, recs, killed)


def _check_mlflow(uri: str, recs: dict, killed: int) -> None:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:  # pragma: no cover
        return
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("k")
    if exp is None:
        pytest.fail("no MLflow experiment for the study")
    runs = {r.info.run_id: r for r in client.search_runs([exp.experiment_id], max_results=1000)}
    for t in recs.values():
        if t.status == "COMPLETE":
            assert t.mlflow_run_id in runs, f"trial {t.number} has no MLflow run"
            assert runs[t.mlflow_run_id].info.status == "FINISHED"
    assert runs[recs[killed].mlflow_run_id].info.status == "KILLED"
