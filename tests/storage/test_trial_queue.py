"""Several processes taking enqueued trials (baselines, coverage, retries) from one storage: each
enqueued trial must be run by exactly one of them, on every backend.

Optuna pops a WAITING trial with ``SELECT ... FOR UPDATE``; SQLite ignores ``FOR UPDATE`` and the
pysqlite driver starts its transaction only at the UPDATE, so two workers could both pop the same
trial and run it twice (seen in CI: "Cannot tell a COMPLETE trial"). ``make_storage`` fixes SQLite
with ``BEGIN IMMEDIATE`` transactions; this test fails without that.
"""

from __future__ import annotations

import multiprocessing as mp

import optuna

from autofuse.storage import make_storage

N_PROCS = 4
N_QUEUED = 48


def _take(url: str, start, out) -> None:  # runs in a child process
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    st = optuna.load_study(study_name="q", storage=make_storage(url))
    start.wait()
    got = []
    try:
        for _ in range(N_QUEUED // N_PROCS):
            t = st.ask()
            x = t.suggest_int("x", 0, N_QUEUED - 1)  # the enqueued value
            got.append((t.number, x))
            st.tell(t, float(x))
    except Exception as e:  # e.g. "Trial#5 has already finished": another process took it too
        out.put(f"{type(e).__name__}: {e}")
        return
    out.put(got)


def test_each_enqueued_trial_runs_once(url):
    st = optuna.create_study(study_name="q", storage=make_storage(url))
    for i in range(N_QUEUED):
        st.enqueue_trial({"x": i})
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_take, args=(url, start, out)) for _ in range(N_PROCS)]
    for p in procs:
        p.start()
    start.set()
    results = [out.get(timeout=120) for _ in procs]
    errors = [r for r in results if isinstance(r, str)]
    assert not errors, errors
    got = [x for r in results for x in r]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    numbers = [n for n, _ in got]
    assert len(set(numbers)) == len(numbers), "one enqueued trial was taken by two workers"
    assert sorted(x for _, x in got) == list(range(N_QUEUED))
    trials = st.get_trials(deepcopy=False)
    assert len(trials) == N_QUEUED
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
