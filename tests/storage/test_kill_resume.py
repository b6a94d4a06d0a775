"""kill -9 a worker in the middle of a trial, resume the study, and check nothing was lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

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


def _wait_for_running_trial(work: Path, proc, url: str, timeout: float = 240) -> int:
    """Wait until one trial has finished and another has checkpointed at least 2 epochs."""
    running = work / "trials" / "k" / "running"
    t0 = time.monotonic()
    hs = None
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, "search ended before it could be killed"
        if (work / "trials" / "autofuse.db").exists():
            try:
                hs = hs or HistoryStore(url)
                recs = hs.trials("k")
            except Exception:
                recs = []
            if any(r.status == "COMPLETE" for r in recs):
                for ck in running.glob("trial_*.pt") if running.exists() else []:
                    try:
                        if torch.load(ck, map_location="cpu", weights_only=False)["epoch"] >= 2:
                            return int(ck.stem.split("_")[1])
                    except Exception:
                        pass  # being replaced right now
        time.sleep(0.2)
    raise AssertionError("no trial reached epoch 2 in time")


@pytest.mark.slow
def test_kill9_mid_trial_then_resume(demo_dataset, tmp_path):
    work = tmp_path / "w"
    url = f"sqlite:///{work / 'trials' / 'autofuse.db'}"
    mlflow_uri = f"sqlite:///{work / 'trials' / 'mlflow.db'}"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        _cmd(demo_dataset, work, mlflow_uri),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        killed = _wait_for_running_trial(work, proc, url)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    hs = HistoryStore(url)
    finished_before = {r.number: r for r in hs.trials("k") if r.status in ("COMPLETE", "PRUNED")}
    assert finished_before and killed not in finished_before
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
