"""Workers through ``autofuse storage-proxy`` (Optuna's gRPC storage proxy) on the real
PostgreSQL: a study created by ``autofuse search`` on the database URL, two ``autofuse worker``
processes joining through ``grpc://``, one of them killed mid-trial. The proxy's reaper retries
the killed trial (no heartbeat crosses the proxy) and mirrors the proxied records into
``autofuse_trials``. A proxy that does not answer is one line, exit 2."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from history_check import assert_consistent

from autofuse.storage.history import HistoryStore
from autofuse.study import search

HERE = Path(__file__).parent
SLOW = str(HERE.parent / "spaces" / "slow_epochs.yaml")
CLI = [sys.executable, "-m", "autofuse.cli"]
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


@pytest.fixture
def pg_url():
    from tests_storage_db import fresh_database

    url, drop = fresh_database("postgresql")
    yield url
    drop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, env=_env()
    )


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")


@pytest.mark.parametrize(
    "address, says",
    [
        ("grpc://127.0.0.1:{port}", "no storage proxy answers there"),
        ("grpc://127.0.0.1", "a storage proxy address is grpc://HOST:PORT"),
    ],
)
def test_no_proxy_is_one_line(address, says, tmp_path):
    r = _cli(
        "worker",
        "--study",
        "s",
        "--storage",
        address.format(port=_free_port()),
        "--workdir",
        str(tmp_path),
        "--device",
        "cpu",
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert says in lines[0]
    assert "Traceback" not in r.stderr


def test_search_through_the_proxy_is_refused(demo_dataset, tmp_path):
    r = _cli(
        "search",
        str(demo_dataset),
        "--study",
        "s",
        "--storage",
        f"grpc://127.0.0.1:{_free_port()}",
        "--workdir",
        str(tmp_path),
        "--space",
        str(HERE.parent / "spaces" / "tiny.yaml"),
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert "runs on the database URL itself" in r.stderr
    assert not (tmp_path / "trials" / "s").exists()  # nothing written


@pytest.mark.slow
def test_workers_through_the_proxy_retry_a_killed_worker(pg_url, demo_dataset, tmp_path):
    # the study, with 1 finished trial, created directly on the database URL
    search(
        demo_dataset,
        study="px",
        trials=1,
        space=SLOW,
        workdir=tmp_path,
        storage=pg_url,
        progress=False,
        mlflow_uri="off",
        heartbeat_interval=1,
        checkpoint_every_s=0,  # a checkpoint every epoch
        report=False,
    )
    port = _free_port()
    proxy = subprocess.Popen(
        [*CLI, "storage-proxy", "--storage", pg_url, "--port", str(port)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    cmd = [
        *CLI,
        "worker",
        "--study",
        "px",
        "--storage",
        f"grpc://127.0.0.1:{port}",
        "--trials",
        "5",
        "--workdir",
        str(tmp_path),
        "--device",
        "cpu",
    ]
    workers = []
    try:
        for seed in ("11", "12"):
            workers.append(
                subprocess.Popen(
                    [*cmd, "--seed", seed],
                    env=_env(),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        a, b = workers
        st = optuna.load_study(study_name="px", storage=pg_url)
        t0, mine = time.monotonic(), []
        while time.monotonic() - t0 < 240 and not mine:  # until worker a runs a trial
            mine = [
                t
                for t in st.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                if str(t.user_attrs.get("worker", "")).endswith(f":{a.pid}")
                and len(t.user_attrs.get("history") or []) >= 2  # checkpoints to resume from
            ]
            time.sleep(0.3)
        assert mine, "worker a never ran a trial through the proxy: " + a.stderr.read()[-2000:]
        killed = mine[0].number
        os.kill(a.pid, signal.SIGKILL)
        a.wait(timeout=30)
        err = b.communicate(timeout=600)[1]
        assert b.returncode == 0, err[-3000:]
    finally:
        for p in workers:
            if p.poll() is None:
                p.kill()
        proxy.send_signal(signal.SIGTERM)  # stops like Ctrl-C: mirrors the last records
        proxy_err = proxy.communicate(timeout=60)[1]
    assert proxy.returncode == 0, proxy_err[-3000:]
    assert "Traceback" not in proxy_err, proxy_err[-3000:]

    trials = optuna.load_study(study_name="px", storage=pg_url).get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == 5, [(t.number, t.state) for t in trials]
    # the killed trial failed (the proxy's reaper) and a retry of it finished on worker b
    assert next(t for t in trials if t.number == killed).state == optuna.trial.TrialState.FAIL
    recs = {r.number: r for r in HistoryStore(pg_url).trials("px")}
    assert recs[killed].status == "FAIL" and recs[killed].reason == "killed"
    retries = [r for r in recs.values() if r.retry_of == killed]
    assert retries and retries[0].status in ("COMPLETE", "PRUNED"), retries
    assert retries[0].worker.endswith(f":{b.pid}")
    retry = retries[0]
    assert (retry.resumed_from_epoch or 0) >= 2  # from a's checkpoint (a shared workdir)
    assert [h["epoch"] for h in retry.history] == list(range(1, 9))  # a's epochs, then its own
    # every proxied trial is mirrored into autofuse_trials with its curve, in Optuna's state
    for t in finished:
        assert recs[t.number].status == t.state.name
        assert recs[t.number].history, f"trial {t.number}: no epoch curve mirrored"
    assert_consistent(pg_url, "px")


def test_upkeep_retries_silent_proxied_trials_and_mirrors_records(tmp_path):
    """The proxy's reaper and history mirror on a real SQLite storage (no worker processes):
    a proxied trial whose heartbeat stops is failed and queued for retry, one still beating and a
    direct worker's trial are left alone, and the proxied records reach ``autofuse_trials``."""
    from autofuse.storage.proxy import HEARTBEAT_ATTR
    from autofuse.storage.proxy_server import Upkeep
    from autofuse.storage.sql import make_storage

    url = f"sqlite:///{tmp_path / 'p.db'}"
    storage = make_storage(url)
    HistoryStore(url).upsert_study("u", metric="accuracy", direction="maximize")
    st = optuna.create_study(study_name="u", storage=storage, direction="maximize")
    st.set_user_attr("search_options", {"heartbeat_interval": 1, "grace_period": 1, "max_retry": 2})
    silent, beating, direct = st.ask(), st.ask(), st.ask()
    for t in (silent, beating):
        t.suggest_float("x", 0, 1)
        t.set_user_attr("family", "early")
        storage.set_trial_system_attr(t._trial_id, HEARTBEAT_ATTR, 1.0)
    silent.set_user_attr("history", [{"epoch": 1, "acc": 0.5}])

    upkeep = Upkeep(storage, url)
    upkeep.step()  # first sight of the stamps: the grace starts now, on the proxy's clock
    assert upkeep.mirror(st) == 0  # nothing changed since the pass
    time.sleep(1.2)
    storage.set_trial_system_attr(beating._trial_id, HEARTBEAT_ATTR, 2.0)
    upkeep.step()

    by_number = {t.number: t for t in st.get_trials(deepcopy=False)}
    assert by_number[silent.number].state == optuna.trial.TrialState.FAIL
    assert by_number[beating.number].state == optuna.trial.TrialState.RUNNING
    assert by_number[direct.number].state == optuna.trial.TrialState.RUNNING  # not stamped
    (retry,) = [t for t in by_number.values() if t.state == optuna.trial.TrialState.WAITING]
    assert retry.system_attrs["failed_trial"] == silent.number
    assert retry.params == by_number[silent.number].params
    assert HEARTBEAT_ATTR not in retry.system_attrs  # the retry starts its own

    upkeep.close()  # a last mirror pass
    recs = {r.number: r for r in HistoryStore(url).trials("u")}
    assert set(recs) == {silent.number, beating.number}  # the proxied ones
    assert (recs[silent.number].status, recs[silent.number].reason) == ("FAIL", "killed")
    assert recs[silent.number].history == [{"epoch": 1, "acc": 0.5}]
    assert (recs[beating.number].status, recs[beating.number].family) == ("RUNNING", "early")


def _stale_proxied_trial(tmp_path):
    """A study on a real SQLite storage with one proxied trial whose heartbeat stopped."""
    from autofuse.storage.proxy import HEARTBEAT_ATTR
    from autofuse.storage.sql import make_storage

    storage = make_storage(f"sqlite:///{tmp_path / 'r.db'}")
    st = optuna.create_study(study_name="r", storage=storage, direction="maximize")
    st.set_user_attr("search_options", {"heartbeat_interval": 1, "grace_period": 1, "max_retry": 2})
    silent = st.ask()
    silent.suggest_float("x", 0, 1)
    storage.set_trial_system_attr(silent._trial_id, HEARTBEAT_ATTR, 1.0)
    return storage, st, silent


def test_upkeep_queues_the_retry_before_it_fails_the_stale_trial(tmp_path, monkeypatch):
    """A worker counts finished + running trials against the target at any moment; the reaper
    queues the retry before it fails the stale trial, so no count sees neither (that worker would
    start a fresh trial and the retry would wait forever)."""
    from autofuse.storage.proxy_server import Upkeep

    storage, st, silent = _stale_proxied_trial(tmp_path)
    seen = []
    fail = storage.set_trial_state_values

    def counting_fail(trial_id, state, values=None):
        if trial_id == silent._trial_id and state == optuna.trial.TrialState.FAIL:
            seen.append([t.state for t in st.get_trials() if t.number != silent.number])
        return fail(trial_id, state, values)

    monkeypatch.setattr(storage, "set_trial_state_values", counting_fail)
    upkeep = Upkeep(storage, None)
    upkeep.step()
    time.sleep(1.2)
    upkeep.step()
    assert seen == [[optuna.trial.TrialState.WAITING]]  # the retry was there already
    states = [t.state for t in st.get_trials()]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING]


def test_upkeep_drops_the_retry_of_a_trial_that_ended_meanwhile(tmp_path, monkeypatch):
    """The stale trial's worker finishes it just as the reaper queues the retry: the trial stays
    COMPLETE and the retry is failed before any worker runs the trial twice."""
    from autofuse.storage.proxy_server import Upkeep

    storage, st, silent = _stale_proxied_trial(tmp_path)
    queue = st.add_trial

    def worker_finishes_now(trial):  # the retry is queued, then the worker ends the trial
        queue(trial)
        storage.set_trial_state_values(silent._trial_id, optuna.trial.TrialState.COMPLETE, [0.7])

    upkeep = Upkeep(storage, None)
    upkeep.step()
    time.sleep(1.2)
    monkeypatch.setattr(st, "add_trial", worker_finishes_now)
    assert upkeep.reap(st) == []
    states = [t.state for t in st.get_trials()]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]
    assert not st.get_trials(states=(optuna.trial.TrialState.WAITING,))
