"""Trial throughput with 1 and 2 worker processes on one study, and the per-trial overhead of
storage + MLflow bookkeeping as a share of trial time (measured in one run).

    python benchmarks/workers.py [--trials 12] [--workdir /tmp/autofuse-workers-bench]

Both runs use the same demo dataset and the same small space on CPU, with SQLite storage and a
SQLite MLflow store; the 2-worker run splits the cores between its workers (1 torch thread each
on 2 cores). Pruning is off by default (``--pruner``): what a pruner stops depends on the order
in which parallel trials finish, so with it the two runs would train different amounts of work.
The table also shows the summed trial time ("work s"): with 2 workers each trial runs on one
torch thread instead of two, so each takes longer and the gain is below 2x on 2 cores.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--workdir", default="/tmp/autofuse-workers-bench")
    # the demo space: trials of several seconds, so that worker start-up (importing torch,
    # loading the data: ~10 s per process) does not dominate; tests/spaces/tiny_all.yaml shows
    # that case
    ap.add_argument("--space", default=str(REPO / "search_spaces" / "demo.yaml"))
    ap.add_argument("--pruner", default="none")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import optuna

    from autofuse.data.builders import build_demo
    from autofuse.study import search

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    data = build_demo(work / "demo", n=400, seed=0)
    results = {}
    for n_workers in (1, 2):
        wd = work / f"w{n_workers}"
        t = time.monotonic()
        search(
            data,
            study=f"bench{n_workers}",
            trials=args.trials,
            space=args.space,
            workdir=wd,
            progress=False,
            workers=n_workers,
            devices="cpu",
            report=False,
            pruner=args.pruner,
            mlflow_uri=f"sqlite:///{wd / 'trials' / 'mlflow.db'}",
        )
        wall = time.monotonic() - t
        st = optuna.load_study(
            study_name=f"bench{n_workers}", storage=f"sqlite:///{wd / 'trials' / 'autofuse.db'}"
        )
        done = [x for x in st.trials if "trial_time_s" in x.user_attrs]
        shares = [
            x.user_attrs["overhead_s"] / x.user_attrs["trial_time_s"]
            for x in done
            if x.user_attrs.get("trial_time_s")
        ]
        results[n_workers] = (
            wall,
            len(done),
            statistics.median(shares) if shares else float("nan"),
            statistics.median(x.user_attrs["overhead_s"] for x in done),
            sum(x.user_attrs.get("trial_time_s", 0.0) for x in done),
        )
    print(
        f"{'workers':>7}{'trials':>8}{'wall s':>9}{'trials/min':>12}{'work s':>9}"
        f"{'overhead/trial':>16}{'overhead share':>16}"
    )
    for n, (wall, k, share, ov, work_s) in results.items():
        print(
            f"{n:>7}{k:>8}{wall:>9.1f}{60 * k / wall:>12.2f}{work_s:>9.1f}"
            f"{ov:>15.3f}s{100 * share:>15.1f}%"
        )
    r1, r2 = results[1], results[2]
    print(
        f"throughput ratio 2 workers / 1 worker: {(r2[1] / r2[0]) / (r1[1] / r1[0]):.2f}x "
        "(wall time includes each worker's start-up: importing torch and loading the data)"
    )


if __name__ == "__main__":
    main()
