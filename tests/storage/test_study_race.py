"""Processes starting the same new study at the same instant (the documented way to scale out)
all join one study: no crash, exactly the requested number of finished trials, one registered
model version, and every trial in the same state in Optuna, autofuse's tables and MLflow.

Before the fix, on a new database the processes raced to create Optuna's and autofuse's tables
("Table ... already exists", a half-migrated schema refused as old) and the study's row
(``UniqueViolation`` on ``autofuse_studies``), and two searches finishing together registered the
same best trial twice. Now tables are created under ``SchemaLock``, the study is created or joined
(and its records written) under ``StudyLock``, and the best model is registered once per best model.

The processes are real (``spawn``), each waits at a barrier before every repetition, so all of
them open a fresh database at once; a repetition is a new study on a new database.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import traceback
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from history_check import assert_consistent

from autofuse.storage import make_storage
from autofuse.storage.history import HistoryStore

HERE = Path(__file__).parent
GOOD = HERE.parent / "data" / "good"
TINY = str(HERE.parent / "spaces" / "tiny.yaml")
N_PROCS = 4
TRIALS = 4
REPS = 10


def _race(rank: int, barrier, jobs: list[tuple[str, str, str]], workdir: str, out: str) -> None:
    """Child process: one search per job, each started behind the barrier."""
    err = open(Path(out) / f"stderr-{rank}.txt", "w")  # noqa: SIM115 - the child's stderr
    os.dup2(err.fileno(), 2)
    sys.stderr = err
    from autofuse.study import search

    for i, (url, study, mlflow_uri) in enumerate(jobs):
        barrier.wait(timeout=600)
        try:
            search(
                GOOD,
                study=study,
                trials=TRIALS,
                space=TINY,
                storage=url,
                workdir=workdir,
                mlflow_uri=mlflow_uri,
                device="cpu",
                progress=False,
                report=False,
            )
            result = "ok"
        except BaseException:  # the test reports it
            result = traceback.format_exc()
        (Path(out) / f"result-{rank}-{i}.txt").write_text(result)
    err.flush()


def _databases(kind: str, tmp: Path, n: int):
    if kind == "sqlite":
        return [f"sqlite:///{tmp / f'rep{i}.db'}" for i in range(n)], []
    from tests_storage_db import fresh_database

    made = [fresh_database(kind) for _ in range(n)]
    return [u for u, _ in made], [drop for _, drop in made]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mysql"])
def test_four_searches_start_one_study_at_once(kind, tmp_path):
    # MLflow (a SQLite store shared by the processes) on the SQLite set: it checks the
    # registration; off elsewhere for speed
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}" if kind == "sqlite" else "off"
    urls, drops = _databases(kind, tmp_path, REPS)
    jobs = [(u, f"race{i}", mlflow_uri) for i, u in enumerate(urls)]
    out = tmp_path / "out"
    out.mkdir()
    try:
        ctx = mp.get_context("spawn")
        barrier = ctx.Barrier(N_PROCS)
        procs = [
            ctx.Process(target=_race, args=(r, barrier, jobs, str(tmp_path), str(out)))
            for r in range(N_PROCS)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=1200)
        crashed = []
        for r in range(N_PROCS):
            for i in range(REPS):
                f = out / f"result-{r}-{i}.txt"
                text = f.read_text() if f.exists() else "no result"
                if text != "ok":
                    crashed.append(f"process {r}, repetition {i}:\n{text}")
        assert not crashed, "\n".join(crashed)
        assert [p.exitcode for p in procs] == [0] * N_PROCS
        for r in range(N_PROCS):
            err = (out / f"stderr-{r}.txt").read_text()
            assert "Traceback" not in err, err[-3000:]
        for url, study, _ in jobs:
            _check_repetition(url, study, mlflow_uri)
    finally:
        for drop in drops:
            drop()


def _check_repetition(url: str, study: str, mlflow_uri: str) -> None:
    assert optuna.get_all_study_names(url) == [study]
    st = optuna.load_study(study_name=study, storage=url)
    states = [t.state for t in st.get_trials(deepcopy=False)]
    done = states.count(optuna.trial.TrialState.COMPLETE) + states.count(
        optuna.trial.TrialState.PRUNED
    )
    assert done == TRIALS and len(states) == TRIALS, states
    assert [s.name for s in HistoryStore(url, create=False).studies()] == [study]
    assert_consistent(url, study, None if mlflow_uri == "off" else mlflow_uri)
    if mlflow_uri == "off":
        return
    from mlflow.tracking import MlflowClient  # the processes of the fast test need no MLflow

    client = MlflowClient(mlflow_uri, registry_uri=mlflow_uri)
    versions = client.search_model_versions(f"name='{study}'")
    assert len(versions) == 1, [(v.version, v.run_id) for v in versions]
    exp = client.get_experiment_by_name(study)
    parents = client.search_runs([exp.experiment_id], "tags.`autofuse.role` = 'study'")
    assert [r.info.status for r in parents] == ["FINISHED"]


# ---- the tables alone: many processes open one new database at once (fast, every backend) ----


def _open(url: str, barrier, out: str, rank: int) -> None:
    try:
        barrier.wait(timeout=120)
        make_storage(url)
        hs = HistoryStore(url)
        hs.upsert_study("s", metric="accuracy")
        result = "ok"
    except BaseException:
        result = traceback.format_exc()
    (Path(out) / f"open-{rank}.txt").write_text(result)


def test_new_database_opened_by_many_processes_at_once(url, tmp_path):
    n = 6
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(n)
    procs = [ctx.Process(target=_open, args=(url, barrier, str(tmp_path), r)) for r in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    results = [(tmp_path / f"open-{r}.txt").read_text() for r in range(n)]
    assert results == ["ok"] * n, "\n".join(r for r in results if r != "ok")
    # one version row each, one study row
    engine = sa.create_engine(url)
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT COUNT(*) FROM alembic_version")).scalar() == 1
        assert c.execute(sa.text("SELECT COUNT(*) FROM version_info")).scalar() == 1
        assert c.execute(sa.text("SELECT COUNT(*) FROM autofuse_alembic_version")).scalar() == 1
        assert c.execute(sa.text("SELECT COUNT(*) FROM autofuse_studies")).scalar() == 1
    engine.dispose()
