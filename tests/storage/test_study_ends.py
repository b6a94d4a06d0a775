"""A study ends with exactly the trials asked for, in every stage (issue 18).

The recipe that ran forever: two ``autofuse search`` processes of one staged study, started at
the same instant on a new database, each with its own ``--workdir`` and no ``--artifacts``. The
second one took trials whose stage-1 encoder files only the first one had, failed them, and a
failed finalist left stage 3 short of its target: the first process then sampled fusion trials
until it was killed. Now the second process is refused before it takes a trial (or, with an
artifact store, fetches what it lacks), a failed finalist is dropped and stage 3 ends, and a
trial whose files are missing is handed back instead of being failed.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from autofuse.stages import FINALIST, FUSION, UNIMODAL, stage_of
from autofuse.storage.history import HistoryStore
from autofuse.study import search
from autofuse.testing.faults import InjectFaults

STAGED = str(Path(__file__).parents[1] / "spaces" / "staged.yaml")
#: staged.yaml: 3 modalities (one encoder each), 2 finalist designs x 2 seeds
N_UNIMODAL, N_FINALIST = 3, 4
ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def storage(request, tmp_path):
    """A new, empty database: a SQLite file, or one on the real PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'shared.db'}"
        return
    from tests_storage_db import fresh_database

    url, drop = fresh_database("postgresql")
    yield url
    drop()


def _by_stage(url: str, study: str) -> dict[str, dict[str, int]]:
    """Per stage, how many trials are in each state."""
    out: dict[str, dict[str, int]] = {}
    for t in optuna.load_study(study_name=study, storage=url).trials:
        per = out.setdefault(stage_of(t), {})
        per[t.state.name] = per.get(t.state.name, 0) + 1
    return out


def _two_searches(dataset, url: str, tmp_path: Path, trials: int, *extra: str) -> list:
    """Two ``autofuse search`` processes of study ``race``, started together, each with its own
    work folder; returns their completed processes (folder a, folder b)."""
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "autofuse.cli",
                "search",
                str(dataset),
                "--study",
                "race",
                "--trials",
                str(trials),
                "--space",
                STAGED,
                "--storage",
                url,
                "--workdir",
                str(tmp_path / name),
                "--mlflow-uri",
                "off",
                "--no-progress",
                *extra,
            ],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for name in ("a", "b")
    ]
    for p in procs:
        p.wait(timeout=600)
    return procs


def _assert_ends_exactly(url: str, fusion: int) -> None:
    counts = _by_stage(url, "race")
    ended = {s: c.get("COMPLETE", 0) + c.get("PRUNED", 0) for s, c in counts.items()}
    assert ended == {UNIMODAL: N_UNIMODAL, FUSION: fusion, FINALIST: N_FINALIST}, counts
    assert not any(c.get("FAIL") or c.get("RUNNING") or c.get("WAITING") for c in counts.values())


def test_separate_folders_without_a_store_one_is_refused_up_front(storage, demo_dataset, tmp_path):
    procs = _two_searches(demo_dataset, storage, tmp_path, 3)
    codes = sorted(p.returncode for p in procs)
    outs = [(p.returncode, p.stdout.read(), p.stderr.read()) for p in procs]
    assert codes == [0, 2], outs
    (refused,) = [(o, e) for c, o, e in outs if c == 2]
    lines = [ln for ln in (refused[0] + refused[1]).splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "--workdir" in lines[0] and "--artifacts" in lines[0] and "race" in lines[0]
    assert "Traceback" not in refused[1]
    # the refused process wrote nothing in its folder and took no trial
    loser = tmp_path / ("a" if procs[0].returncode == 2 else "b")
    assert not loser.exists() or not any(p.is_file() for p in loser.rglob("*"))
    _assert_ends_exactly(storage, fusion=3)
    workers = {
        t.user_attrs.get("worker")
        for t in optuna.load_study(study_name="race", storage=storage).trials
    }
    assert len(workers) == 1


@pytest.mark.slow
def test_separate_folders_with_a_store_fetch_and_the_study_ends(storage, demo_dataset, tmp_path):
    store = (tmp_path / "store").as_uri()
    procs = _two_searches(demo_dataset, storage, tmp_path, 3, "--artifacts", store)
    for p in procs:
        err = p.stderr.read()
        assert p.returncode == 0, err[-3000:]
        assert "Traceback" not in err
    _assert_ends_exactly(storage, fusion=3)


def test_a_failed_finalist_is_dropped_and_stage_three_ends(storage, demo_dataset, tmp_path, caplog):
    """trials 0-2: stage 1; 3-4: the fusion search (2 trials, fewer than staged.yaml's three
    baselines: the third is never queued, so none runs in stage 3); 5-8: the finalists, where
    trial 5 raises (FAIL, dropped) and trial 6 cannot be built (a fault: PRUNED)."""
    caplog.set_level(logging.WARNING)
    res = search(
        demo_dataset,
        study="race",
        space=STAGED,
        trials=2,
        storage=storage,
        workdir=tmp_path / "w",
        mlflow_uri="off",
        progress=False,
        report=False,
        hooks=[InjectFaults({5: "error", 6: "invalid"})],
    )
    counts = _by_stage(storage, "race")
    assert counts == {
        UNIMODAL: {"COMPLETE": N_UNIMODAL},
        FUSION: {"COMPLETE": 2},
        FINALIST: {"FAIL": 1, "PRUNED": 1, "COMPLETE": 2},
    }, counts
    trials = {t.number: t for t in optuna.load_study(study_name="race", storage=storage).trials}
    assert stage_of(trials[5]) == FINALIST and trials[5].state.name == "FAIL"
    assert trials[6].user_attrs["reason"] == "invalid"
    # the winner comes from the finalists that completed
    assert set(res.summary["winner"]["trials"]) <= {7, 8}
    # no traceback reached the log (the terminal); the trial's record keeps it
    assert not any("Traceback" in r.getMessage() or r.exc_info for r in caplog.records)
    assert any("trial 5 failed: RuntimeError: injected" in r.getMessage() for r in caplog.records)
    rec = next(r for r in HistoryStore(storage).trials("race") if r.number == 5)
    assert rec.status == "FAIL" and rec.reason == "error"
    assert rec.error.startswith("RuntimeError: injected") and "Traceback" in rec.error


def test_a_trial_whose_stage_one_files_are_gone_is_handed_back(demo_dataset, tmp_path):
    """A resumed study whose stage-1 encoder files were removed (and no store has them): the
    fusion trial that needs them is not failed as a fault; it is queued again for a process
    that has them, and this one stops with one line."""
    work, url = tmp_path / "w", f"sqlite:///{tmp_path / 'w' / 'trials' / 'autofuse.db'}"
    space = tmp_path / "no_finalists.yaml"  # a resumed study runs more fusion trials
    space.write_text(f"extends: {STAGED}\nstages: {{enabled: true, finalists: 0}}\n")
    argv = [sys.executable, "-m", "autofuse.cli", "search", str(demo_dataset), "--study", "gone",
            "--space", str(space), "--workdir", str(work), "--mlflow-uri", "off",
            "--no-progress"]  # fmt: skip
    first = subprocess.run([*argv, "--trials", "2"], env=ENV, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    for d in (work / "trials" / "cache").iterdir():
        if (d / "stage1.json").is_file():
            shutil.rmtree(d)
    again = subprocess.run([*argv, "--trials", "3"], env=ENV, capture_output=True, text=True)
    assert again.returncode == 2, again.stderr[-3000:]
    errors = [ln for ln in again.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "stage-1 encoder" in errors[0] and "--artifacts" in errors[0]
    assert "Traceback" not in again.stderr
    trials = optuna.load_study(study_name="gone", storage=url).trials
    handed = [t for t in trials if t.user_attrs.get("reason") == "missing_files"]
    assert len(handed) == 1 and stage_of(handed[0]) == FUSION
    queued = [t for t in trials if t.user_attrs.get("retry_of") == handed[0].number]
    assert len(queued) == 1 and queued[0].state.name == "WAITING"
    assert stage_of(queued[0]) == FUSION
    # nothing counted as a fault: no trial pruned as invalid
    assert not any(t.user_attrs.get("reason") == "invalid" for t in trials)
