"""Stopping a multi-worker search (Ctrl-C / SIGTERM): running trials end as failed and are queued
to resume from their epoch checkpoints; nothing is corrupted; resuming finishes the study."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from history_check import assert_consistent

from autofuse.storage.history import HistoryStore

SLOW = str(Path(__file__).parents[1] / "spaces" / "slow_epochs.yaml")


@pytest.mark.slow
def test_sigterm_stops_workers_and_resume_continues(demo_dataset, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "autofuse.cli",
        "search",
        str(demo_dataset),
        "--study",
        "int",
        "--trials",
        "6",
        "--space",
        SLOW,
        "--workers",
        "2",
        "--devices",
        "cpu",
        "--mlflow-uri",
        "off",
        "--no-progress",
        "--checkpoint-every",
        "0",
        "--workdir",
        str(tmp_path),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    running = tmp_path / "trials" / "int" / "running"
    t0 = time.monotonic()
    while time.monotonic() - t0 < 240:
        assert proc.poll() is None, "search ended before it could be stopped"
        cks = list(running.glob("trial_*.pt")) if running.exists() else []
        try:
            if cks and any(torch.load(c, weights_only=False)["epoch"] >= 2 for c in cks):
                break
        except Exception:
            pass  # a checkpoint being replaced
        time.sleep(0.2)
    else:
        pytest.fail("no trial reached epoch 2")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err
    # one line per stopped trial (from its worker) and a summary, no Optuna traceback
    assert "Traceback" not in err, err[-3000:]
    assert err.count(" stopped: ") == 1, err[-3000:]
    url = f"sqlite:///{tmp_path / 'trials' / 'autofuse.db'}"
    st = optuna.load_study(study_name="int", storage=url)
    stopped = [t for t in st.trials if t.user_attrs.get("reason") == "interrupted"]
    assert stopped and all(t.state == optuna.trial.TrialState.FAIL for t in stopped)
    lines = [
        ln for ln in err.splitlines() if re.search(r"trial \d+ interrupted (after|before)", ln)
    ]
    assert len(lines) == len(stopped), err[-3000:]
    queued = [t for t in st.trials if t.state == optuna.trial.TrialState.WAITING]
    assert sorted(t.user_attrs["retry_of"] for t in queued) == sorted(t.number for t in stopped)
    assert not [t for t in st.trials if t.state == optuna.trial.TrialState.RUNNING]
    assert_consistent(url, "int")

    r = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1")
    )
    assert r.returncode == 0, r.stderr[-2000:]
    recs = {t.number: t for t in HistoryStore(url).trials("int")}
    finished = [t for t in recs.values() if t.status in ("COMPLETE", "PRUNED")]
    assert len(finished) == 6
    resumed = [t for t in recs.values() if t.retry_of is not None]
    assert resumed and any((t.resumed_from_epoch or 0) >= 2 for t in resumed)
    assert_consistent(url, "int")
