"""Issue 18: the plain storage URLs Optuna's and SQLAlchemy's docs use, and most users type
(``postgresql://user@host/db``, ``mysql://user@host/db``, ``mariadb://...``), work against the real
PostgreSQL and MariaDB servers of this machine kind.

SQLAlchemy 2.1 gives ``postgresql://`` psycopg 3 (a dependency of autofuse, beside psycopg2) and
``mysql://`` / ``mariadb://`` mysqlclient, which autofuse does not ship: there the plain forms
resolve to PyMySQL (:func:`autofuse._util.plain_mysql_urls_use_pymysql`). Every opener sees the
same driver: Optuna's storage, the history store and its migrations, the study lock, the guard,
and a fresh ``autofuse search`` process.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from history_check import assert_consistent

from autofuse.options import storage_problem
from autofuse.storage.guard import check_storage
from autofuse.storage.history import HistoryStore, head_revision
from autofuse.storage.lock import StudyLock
from autofuse.storage.sql import close_storage, make_storage

TESTS = Path(__file__).parents[1]
GOOD = TESTS / "data" / "good"
TINY = TESTS / "spaces" / "tiny.yaml"

#: plain scheme -> (the server of tests_storage_db, the driver SQLAlchemy must pick)
PLAIN = {
    "postgresql": ("postgresql", "psycopg"),
    "mysql": ("mysql", "mysqldb" if importlib.util.find_spec("MySQLdb") else "pymysql"),
    "mariadb": ("mysql", "mysqldb" if importlib.util.find_spec("MySQLdb") else "pymysql"),
}


@pytest.fixture(params=sorted(PLAIN))
def plain(request) -> tuple[str, str]:
    """``(plain URL of a fresh, empty database, the driver it must resolve to)``."""
    from tests_storage_db import fresh_database, plain_url

    server, driver = PLAIN[request.param]
    url, drop = fresh_database(server)
    yield plain_url(url, request.param), driver
    drop()


def test_plain_url_resolves_to_an_installed_driver(plain):
    url, driver = plain
    assert storage_problem(url) is None
    engine = sa.create_engine(url)
    try:
        assert engine.dialect.driver == driver
        with engine.connect() as c:
            assert c.execute(sa.text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


def test_plain_url_storage_contract(plain):
    """The history store (Alembic migrations included), Optuna's storage, the study lock and
    the guard all open the plain URL and work on the one database."""
    url, _ = plain
    check_storage(url, write=True)
    hs = HistoryStore(url)
    assert hs.current_revision() == head_revision()
    storage = make_storage(url)
    try:
        study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
        with StudyLock(url, "s"):
            trial = study.ask()
        hs.upsert_study(
            "s",
            dataset_fingerprint="f" * 64,
            dataset_info={"name": "d", "rows": 3},
            space={"name": "tiny"},
            metric="accuracy",
            direction="maximize",
            dataset_path="/x",
        )
        hs.record_trial("s", trial.number, status="RUNNING", family="attention", device="cpu")
        study.tell(trial, 0.75)
        hs.record_trial("s", trial.number, status="COMPLETE", value=0.75)
        again = optuna.load_study(study_name="s", storage=make_storage(url))
        assert [t.value for t in again.get_trials()] == [0.75]
        assert [(r.number, r.status, r.value) for r in hs.trials("s")] == [(0, "COMPLETE", 0.75)]
        assert_consistent(url, "s")
    finally:
        close_storage(storage)
        hs.close()
    check_storage(url, write=True)  # what autofuse made there is accepted on the next run


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
def test_search_on_a_plain_url(scheme, tmp_path):
    """``autofuse search ... --storage postgresql://postgres@127.0.0.1:5432/DB`` (and the
    ``mysql://`` equivalent), in a fresh process, as a user runs it: the study's trial is in the
    database, in Optuna's tables and autofuse's alike."""
    from tests_storage_db import fresh_database, plain_url

    url, drop = fresh_database(PLAIN[scheme][0])
    try:
        url = plain_url(url, scheme)
        argv = [
            "search", str(GOOD), "--study", "s", "--space", str(TINY), "--trials", "1",
            "--storage", url, "--mlflow-uri", "off", "--no-progress", "--device", "cpu",
            "--workdir", str(tmp_path / "work"),
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "AUTOFUSE_HOME"}
        proc = subprocess.run(
            [sys.executable, "-m", "autofuse.cli", *argv],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-3000:]
        assert "Traceback" not in out, out[-3000:]
        storage = make_storage(url)
        try:
            trials = optuna.load_study(study_name="s", storage=storage).get_trials()
        finally:
            close_storage(storage)
        # the one trial asked for ran; trials still queued for a later run are WAITING
        ran = [t.state.name for t in trials if t.state.name != "WAITING"]
        assert ran == ["COMPLETE"], [t.state.name for t in trials]
        assert [r.status for r in HistoryStore(url, create=False).trials("s")] == ["COMPLETE"]
        assert_consistent(url, "s")
    finally:
        drop()
