"""Benchmark: database connections and storage latency per trial, with N workers talking to
PostgreSQL directly versus through ``autofuse storage-proxy`` (Optuna's gRPC storage proxy).

Each worker is a process that loads the study and runs ``--trials`` ask/tell pairs (no training:
the storage is all that is measured), all workers released at once by a barrier. While they run,
the parent samples ``pg_stat_activity`` for the connections to the database. Everything runs in
a fresh database created on the server of ``--storage`` (and dropped at the end), so the proxy's
upkeep pass and the connection count see only the benchmark's studies. Printed per worker
count and mode: peak connections above the idle baseline (the proxy's own included), median,
mean and p95 seconds per trial (ask + tell), trials per second overall, trials stored, workers
that failed (a database refusing connections: ``too many clients``), and the ratios.

Usage::

    python benchmarks/storage_proxy.py [--workers 16,64] [--trials 10]
        [--storage postgresql+psycopg2://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import contextlib
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
    """One worker: ``trials`` ask/tell pairs; puts (seconds per trial, error or None). A worker
    the database refuses (``too many clients``) reports it instead of its trials."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    times: list[float] = []
    try:
        if storage_url.startswith("grpc://"):
            from autofuse.storage.proxy import open_proxy

            storage = open_proxy(storage_url)
        else:
            storage = optuna.storages.RDBStorage(storage_url)
        st = optuna.load_study(study_name=study, storage=storage)
    except Exception as e:
        barrier.wait()
        out.put((times, _first_line(e)))
        return
    barrier.wait()
    try:
        for _ in range(trials):
            t0 = time.perf_counter()
            trial = st.ask()
            x = trial.suggest_float("x", -1, 1)
            st.tell(trial, x * x)
            times.append(time.perf_counter() - t0)
    except Exception as e:
        out.put((times, _first_line(e)))
        return
    out.put((times, None))


def _first_line(e: BaseException) -> str:
    cause = e.__cause__ or e
    text = str(getattr(cause, "orig", None) or cause).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def connections(conn: sa.Connection) -> int:
    return conn.execute(
        sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
    ).scalar_one()


class PeakSampler(threading.Thread):
    """Samples the database's connection count every 50 ms on a connection of its own, opened
    before the workers start (so it is not refused when they exhaust the server); ``peak`` is the
    largest count seen."""

    def __init__(self, engine: sa.Engine) -> None:
        super().__init__(daemon=True)
        # autocommit: in one transaction PostgreSQL would show the same pg_stat_activity snapshot
        self.conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        self.peak, self.stop = 0, threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.peak = max(self.peak, connections(self.conn))
                time.sleep(0.05)
        finally:
            self.conn.close()


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
    sampler = PeakSampler(engine)
    baseline = connections(sampler.conn)  # the sampler's own connection; before the proxy
    proc, target = start_proxy(url) if proxy else (None, url)
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(n + 1), ctx.Queue()
    procs = [
        ctx.Process(target=worker, args=(target, study, trials, barrier, out)) for _ in range(n)
    ]
    try:
        for p in procs:
            p.start()
        sampler.start()
        barrier.wait()
        t0 = time.perf_counter()
        results = [out.get(timeout=600) for _ in procs]
        wall = time.perf_counter() - t0
        sampler.stop.set()
        sampler.join()
        for p in procs:
            p.join()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    times = sorted(t for ts, _ in results for t in ts)
    errors = [e for _, e in results if e]
    done = len(optuna.load_study(study_name=study, storage=url).trials)
    return {
        "connections": sampler.peak - baseline,
        "median_s": statistics.median(times) if times else float("nan"),
        "mean_s": statistics.fmean(times) if times else float("nan"),
        "p95_s": times[int(0.95 * (len(times) - 1))] if times else float("nan"),
        "trials_per_s": len(times) / wall,
        "trials": done,
        "failed": len(errors),
        "error": errors[0] if errors else "",
    }


@contextlib.contextmanager
def fresh_database(server_url: str):
    """A new, empty database on the server of ``server_url``; yields its URL, then drops it."""
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    name = f"autofuse_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as c:
        c.execute(sa.text(f"CREATE DATABASE {name}"))
    try:
        yield server_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", default="16,64")
    p.add_argument("--trials", type=int, default=10, help="ask/tell pairs per worker")
    p.add_argument("--storage", default=PG)
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with fresh_database(args.storage) as url:
        bench(url, [int(x) for x in args.workers.split(",")], args.trials)


def bench(url: str, counts: list[int], trials: int) -> None:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    optuna.storages.RDBStorage(url)  # Optuna's tables, before any timing
    print(f"{'workers':>7} {'mode':>6} {'db conns':>8} {'median s/trial':>14} {'mean s':>7} "
          f"{'p95 s':>7} {'trials/s':>8} {'trials':>7} {'failed workers':>14}")  # fmt: skip
    for n in counts:
        res = {}
        for mode in ("direct", "proxy"):
            r = res[mode] = run(url, n, trials, mode == "proxy", engine)
            print(f"{n:>7} {mode:>6} {r['connections']:>8} {r['median_s']:>14.4f} "
                  f"{r['mean_s']:>7.4f} {r['p95_s']:>7.4f} {r['trials_per_s']:>8.1f} "
                  f"{r['trials']:>4}/{n * trials:<4} {r['failed']:>8}"
                  + (f"  ({r['error']})" if r["error"] else ""), flush=True)  # fmt: skip
        d, g = res["direct"], res["proxy"]
        print(f"{n:>7} ratios direct/proxy: connections {d['connections'] / max(g['connections'], 1):.1f}x, "
              f"median latency {d['median_s'] / g['median_s']:.2f}x, p95 {d['p95_s'] / g['p95_s']:.2f}x, throughput {d['trials_per_s'] / g['trials_per_s']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
