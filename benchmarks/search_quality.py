"""Does the search earn its keep? The default staged search against its own baselines, the best
unimodal model and random search at the same time budget, over seeds, on held-out test splits.

For each dataset (the AV-MNIST-style set built from ../shared/datasets, 3,000 rows; the demo
data) and each seed it runs ``autofuse search --time-budget B`` with the default space (TPE) and
the same with ``--sampler random``, then reads from each study:

- winner: the exported winner's test metric (single model or ensemble);
- best baseline: test metric of the hand-designed baseline (stage 2) with the best validation;
- best unimodal: test metric of the stage-1 model with the best validation;
- random search: the random-search study's winner.

Every study lives in one storage under ``--workdir``: an interrupted run resumes where it
stopped (finished studies are read back, not run again). Separately (``--long``) it runs one
60-trial default search and reports its wall time, and the mean time of a stage-2 trial against
an end-to-end trial of the winning design (encoders trained from scratch, as the single-stage
search trains every candidate).

Usage: .venv/bin/python benchmarks/search_quality.py [--budget 10m] [--seeds 3]
       [--datasets avmnist,demo] [--long] [--workdir /tmp/autofuse-quality]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

import optuna  # noqa: E402

from autofuse._util import best_first  # noqa: E402
from autofuse.data.builders import build_avmnist, build_demo  # noqa: E402
from autofuse.metrics import OBJECTIVES  # noqa: E402
from autofuse.stages import FUSION, UNIMODAL, stage_of  # noqa: E402
from autofuse.study import search  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: the shared datasets (MNIST, FSDD) beside the repository, or where AUTOFUSE_SHARED says
SHARED = Path(os.environ.get("AUTOFUSE_SHARED", REPO.parent / "shared" / "datasets"))


def dataset(name: str, root: Path) -> Path:
    folder = root / "data" / name
    if (folder / "dataset.yaml").exists():
        return folder
    if name == "avmnist":
        return build_avmnist(SHARED / "mnist", SHARED / "fsdd", folder)
    return build_demo(folder)


def run_study(data: Path, study: str, work: Path, budget: str, seed: int, **kw) -> dict:
    """Run (or resume, or read back) one study; returns its summary."""
    summary = work / "trials" / study / "summary.json"
    if summary.exists() and json.loads(summary.read_text()).get("winner"):
        return json.loads(summary.read_text())
    t0 = time.monotonic()
    res = search(
        data,
        study=study,
        workdir=str(work),
        time_budget=budget,
        seed=seed,
        progress=False,
        mlflow_uri="off",
        report=False,
        **kw,
    )
    print(f"  {study}: {time.monotonic() - t0:.0f} s", flush=True)
    return res.summary


def rows_of(work: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    st = optuna.load_study(study_name=study, storage=f"sqlite:///{work / 'trials' / 'autofuse.db'}")
    return st.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def best_test(trials: list, metric: str, direction: str) -> float | None:
    """Test metric of the trial with the best validation value."""
    ranked = best_first(trials, lambda t: t.value, direction)
    return (ranked[0].user_attrs.get("test_metrics") or {}).get(metric) if ranked else None


def measure(name: str, args: argparse.Namespace, work: Path) -> dict[str, list[float]]:
    data = dataset(name, work)
    from autofuse.data import Dataset

    metric, direction = OBJECTIVES[Dataset.load(data).task]
    out: dict[str, list[float]] = {
        "winner": [],
        "best baseline": [],
        "best unimodal": [],
        "random search": [],
    }
    for seed in range(args.seeds):
        print(f"{name} seed {seed}", flush=True)
        s = run_study(data, f"{name}-tpe-{seed}", work, args.budget, seed)
        trials = rows_of(work, f"{name}-tpe-{seed}")
        out["winner"].append(s["winner"]["test"][metric])
        base = [t for t in trials if stage_of(t) == FUSION and "baseline" in t.user_attrs]
        out["best baseline"].append(best_test(base, metric, direction))
        uni = [t for t in trials if stage_of(t) == UNIMODAL]
        out["best unimodal"].append(best_test(uni, metric, direction))
        r = run_study(data, f"{name}-random-{seed}", work, args.budget, seed, sampler="random")
        out["random search"].append(r["winner"]["test"][metric])
    return out


def table(name: str, res: dict[str, list[float]], metric: str = "accuracy") -> str:
    lines = [f"\n{name}: test {metric}, mean +/- std over {len(res['winner'])} seeds"]
    for k, v in res.items():
        v = [x for x in v if x is not None]
        sd = statistics.pstdev(v) if len(v) > 1 else 0.0
        lines.append(
            f"  {k:<15} {statistics.fmean(v):.4f} +/- {sd:.4f}   {[round(x, 4) for x in v]}"
        )
    w = statistics.fmean(res["winner"])
    for k in ("best baseline", "random search", "best unimodal"):
        v = [x for x in res[k] if x is not None]
        lines.append(f"  winner - {k}: {w - statistics.fmean(v):+.4f}")
    return "\n".join(lines)


def long_run(work: Path) -> None:
    """One 60-trial default search: wall time, and stage-2 vs end-to-end trial time."""
    import torch

    from autofuse.data import Dataset
    from autofuse.runner import CandidateRunner
    from autofuse.spec import ArchitectureSpec

    data = dataset("avmnist", work)
    t0 = time.monotonic()
    res = search(
        data, study="avmnist-60", workdir=str(work), trials=60, progress=False, mlflow_uri="off",
        report=False,
    )  # fmt: skip
    wall = time.monotonic() - t0
    s = res.summary
    trials = rows_of(work, "avmnist-60")
    fusion = [t.user_attrs["train_time_s"] for t in trials if stage_of(t) == FUSION]
    design = next(t for t in trials if t.number == s["winner"]["design"])
    spec = ArchitectureSpec.model_validate(design.user_attrs["spec"])
    # the same design end to end: its encoders trained from scratch with it, every training row
    e2e = spec.model_copy(
        update={
            "encoders": {
                m: e.model_copy(update={"mode": "scratch", "source": None}) if e.source else e
                for m, e in spec.encoders.items()
            }
        }
    )
    runner = CandidateRunner(Dataset.load(data), work / "trials" / "cache", torch.device("cpu"))
    t1 = time.monotonic()
    runner.run(e2e)
    end_to_end = time.monotonic() - t1
    mean_fusion = statistics.fmean(fusion)
    print(f"\n60-trial default search on avmnist: wall {wall / 60:.1f} min (target < 30 min)")
    print(f"  stages: {json.dumps(s.get('stages'))}")
    print(
        f"  stage-2 trial mean {mean_fusion:.2f} s vs end-to-end trial of the winning design "
        f"{end_to_end:.1f} s: {end_to_end / mean_fusion:.1f}x cheaper (target >= 10x)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", default="10m")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--datasets", default="avmnist,demo")
    p.add_argument("--long", action="store_true", help="also the 60-trial run")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/autofuse-quality"))
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    args.workdir.mkdir(parents=True, exist_ok=True)
    report = []
    for name in filter(None, args.datasets.split(",")):
        report.append(table(name, measure(name, args, args.workdir)))
        print(report[-1], flush=True)
    if args.long:
        long_run(args.workdir)
    print("\n".join(report))


if __name__ == "__main__":
    main()
