"""kill -9 a worker in the middle of a trial, resume the study, and check nothing was lost; and
the same with the killed trial's running checkpoint damaged before the resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autofuse.storage.history import HistoryStore
from autofuse.testing.faults import rot_checkpoint

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


def _kill_mid_trial(dataset, tmp_path) -> tuple[Path, str, str, dict, int, dict]:
    """Run the study with trial HELD held after its 2nd epoch, kill -9 the process there, and
    wait until that trial is stale. Returns ``(work, url, mlflow_uri, env, killed trial, the
    records of the trials that finished before the kill)``."""
    work = tmp_path / "w"
    url = f"sqlite:///{work / 'trials' / 'autofuse.db'}"
    mlflow_uri = f"sqlite:///{work / 'trials' / 'mlflow.db'}"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    marker = tmp_path / "held"
    script = FIRST_RUN.format(n=N_TRIALS, space=SPACE, held=HELD)
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(dataset), str(work), mlflow_uri, str(marker)],
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
    return work, url, mlflow_uri, env, killed, finished_before


def _resume(dataset, work: Path, mlflow_uri: str, env: dict) -> subprocess.CompletedProcess:
    r = subprocess.run(
        _cmd(dataset, work, mlflow_uri), env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _check_unchanged(finished_before: dict, recs: dict) -> None:
    """Every trial finished before the kill is unchanged."""
    for n, before in finished_before.items():
        after = recs[n]
        assert (after.status, after.value, after.test_metrics, after.history) == (
            before.status,
            before.value,
            before.test_metrics,
            before.history,
        )


@pytest.mark.slow
def test_kill9_mid_trial_then_resume(demo_dataset, tmp_path):
    work, url, mlflow_uri, env, killed, finished_before = _kill_mid_trial(demo_dataset, tmp_path)
    _resume(demo_dataset, work, mlflow_uri, env)

    recs = {t.number: t for t in HistoryStore(url).trials("k")}
    _check_unchanged(finished_before, recs)
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


@pytest.mark.slow
def test_kill9_then_corrupt_running_checkpoint_retries_from_epoch_1(demo_dataset, tmp_path):
    """The killed trial's running checkpoint is damaged before the resume (bytes inverted in a
    tensor: it still loads in torch, only its checksums tell): the retry warns, naming the file,
    and trains from epoch 1; the study finishes with its summary and report."""
    work, url, mlflow_uri, env, killed, finished_before = _kill_mid_trial(demo_dataset, tmp_path)
    ckpt = work / "trials" / "k" / "running" / f"trial_{killed}.pt"
    rot_checkpoint(ckpt, ckpt)

    r = _resume(demo_dataset, work, mlflow_uri, env)

    warned = [ln for ln in r.stderr.splitlines() if str(ckpt) in ln]
    assert len(warned) == 1, r.stderr[-3000:]
    assert warned[0].startswith("WARNING") and warned[0].endswith("the trial starts from epoch 1")
    assert "Traceback" not in r.stderr
    recs = {t.number: t for t in HistoryStore(url).trials("k")}
    _check_unchanged(finished_before, recs)
    assert (recs[killed].status, recs[killed].reason) == ("FAIL", "killed")
    retries = [t for t in recs.values() if t.retry_of == killed]
    assert len(retries) == 1
    retry = retries[0]
    # retried from epoch 1: nothing resumed, every epoch trained and recorded once
    assert retry.status == "COMPLETE" and retry.resumed_from_epoch is None
    assert retry.epochs_run == 8 and [h["epoch"] for h in retry.history] == list(range(1, 9))
    finished = [t for t in recs.values() if t.status in ("COMPLETE", "PRUNED")]
    assert len(finished) == N_TRIALS
    assert not list((work / "trials" / "k" / "running").glob("*.pt"))
    # the study finished: its summary and report are written
    summary = json.loads((work / "trials" / "k" / "summary.json").read_text())
    assert summary["trials"]["completed"] == N_TRIALS
    assert Path(summary["report"]["html"]).is_file()
    assert (work / "reports" / "k" / "report.md").is_file()
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
