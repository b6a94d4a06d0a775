"""Benchmark: database connections and storage latency per trial, with N workers talking to
PostgreSQL directly versus through ``autofuse storage-proxy`` (Optuna's gRPC storage proxy).

Each worker is a process that loads the study and runs ``--trials`` ask/tell pairs (no training:
the storage is all that is measured), all workers released at once by a barrier. While they run,
the parent samples ``pg_stat_activity`` for the connections to the database. Printed per worker
count and mode: peak connections above the idle baseline, mean and p95 seconds per trial
(ask + tell), trials per second overall, and the ratios direct / proxy.

Usage::

    python benchmarks/storage_proxy.py [--workers 16,64] [--trials 10]
        [--storage postgresql+psycopg2://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid

import optuna
import sqlalchemy as sa

PG = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


def worker(storage_url: str, study: str, trials: int, barrier, out) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if storage_url.startswith("grpc://"):
        from autofuse.storage.proxy import open_proxy

        storage = open_proxy(storage_url)
    else:
        storage = optuna.storages.RDBStorage(storage_url)
    st = optuna.load_study(study_name=study, storage=storage)
    barrier.wait()
    times = []
    for _ in range(trials):
        t0 = time.perf_counter()
        trial = st.ask()
        x = trial.suggest_float("x", -1, 1)
        st.tell(trial, x * x)
        times.append(time.perf_counter() - t0)
    out.put(times)


def connections(engine: sa.Engine) -> int:
    with engine.connect() as c:
        return c.execute(
            sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
        ).scalar_one()


class PeakSampler(threading.Thread):
    """Samples the database's connection count every 50 ms; ``peak`` is the largest seen."""

    def __init__(self, engine: sa.Engine) -> None:
        super().__init__(daemon=True)
        self.engine, self.peak, self.stop = engine, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, connections(self.engine))
            time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_proxy(url: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "autofuse.cli", "storage-proxy", "--storage", url,
         "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    from autofuse.storage.proxy import open_proxy

    open_proxy(f"grpc://127.0.0.1:{port}", timeout=60).close()
    return proc, f"grpc://127.0.0.1:{port}"


def run(url: str, n: int, trials: int, proxy: bool, engine: sa.Engine) -> dict:
    study = f"bench-proxy-{uuid.uuid4().hex[:8]}"
    optuna.create_study(study_name=study, storage=url)
    proc, target = start_proxy(url) if proxy else (None, url)
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(n + 1), ctx.Queue()
    procs = [
        ctx.Process(target=worker, args=(target, study, trials, barrier, out)) for _ in range(n)
    ]
    try:
        baseline = connections(engine)
        for p in procs:
            p.start()
        sampler = PeakSampler(engine)
        sampler.start()
        barrier.wait()
        t0 = time.perf_counter()
        times = [t for _ in procs for t in out.get(timeout=600)]
        wall = time.perf_counter() - t0
        sampler.stop.set()
        sampler.join()
        for p in procs:
            p.join()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    done = len(optuna.load_study(study_name=study, storage=url).trials)
    assert done == n * trials, (done, n * trials)
    times.sort()
    return {
        "connections": sampler.peak - baseline,
        "mean_s": statistics.fmean(times),
        "p95_s": times[int(0.95 * (len(times) - 1))],
        "trials_per_s": len(times) / wall,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", default="16,64")
    p.add_argument("--trials", type=int, default=10, help="ask/tell pairs per worker")
    p.add_argument("--storage", default=PG)
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    engine = sa.create_engine(args.storage, poolclass=sa.pool.NullPool)
    print(f"{'workers':>7} {'mode':>6} {'db conns':>8} {'mean s/trial':>12} {'p95 s':>7} "
          f"{'trials/s':>8}")  # fmt: skip
    for n in (int(x) for x in args.workers.split(",")):
        res = {}
        for mode in ("direct", "proxy"):
            r = res[mode] = run(args.storage, n, args.trials, mode == "proxy", engine)
            print(f"{n:>7} {mode:>6} {r['connections']:>8} {r['mean_s']:>12.4f} "
                  f"{r['p95_s']:>7.4f} {r['trials_per_s']:>8.1f}", flush=True)  # fmt: skip
        d, g = res["direct"], res["proxy"]
        print(f"{n:>7} ratios direct/proxy: connections {d['connections'] / max(g['connections'], 1):.1f}x, "
              f"latency {d['mean_s'] / g['mean_s']:.2f}x, throughput {d['trials_per_s'] / g['trials_per_s']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
