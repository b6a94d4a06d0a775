"""Several workers on one study stop at exactly the requested number of finished trials.

A worker checks "finished + running < target" and then creates its trial. Two ways to overshoot,
both seen before the fix: counting finished and running trials in two reads (a trial finishing in
between counts as neither), and two workers passing the check before either has created its trial.
The count now comes from one snapshot, and ``autofuse.storage.lock.StudyLock`` makes
check-and-create atomic across processes (file lock for SQLite, advisory locks on PostgreSQL and
MySQL). Short trials and a slowed-down trial creation (a slow database) widen both windows.
"""

from __future__ import annotations

import multiprocessing as mp
import time

import optuna

from autofuse.storage import make_storage

N_PROCS = 4
N_TOTAL = 24


def _objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", 0, 1)
    time.sleep(0.05)
    return x


def _work(url: str, start, lock: bool = True) -> None:  # runs in a child process
    from autofuse.workers import optimize_until

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    st = optuna.load_study(study_name="b", storage=make_storage(url))
    create = st._storage.create_new_trial

    def slow_create(*a, **k):  # a slow database: the check-then-create window is 50 ms wide
        time.sleep(0.05)
        return create(*a, **k)

    st._storage.create_new_trial = slow_create
    start.wait()
    optimize_until(st, _objective, N_TOTAL, "x", progress=False, storage_url=url if lock else None)


def test_workers_stop_at_the_requested_count(url):
    st = optuna.create_study(study_name="b", storage=make_storage(url))
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_work, args=(url, start)) for _ in range(N_PROCS)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(timeout=180)
        assert p.exitcode == 0
    states = [t.state for t in st.get_trials(deepcopy=False)]
    assert states.count(optuna.trial.TrialState.COMPLETE) == N_TOTAL, states
    assert len(states) == N_TOTAL
