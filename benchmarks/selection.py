"""Selection you can trust? Single-split against K-fold cross-validated selection of the stage-2
fusion designs, on synthetic datasets built to expose selection noise (issue 19).

Each dataset has a small validation split and a large test split (thousands of rows at
``--scale 1``), and is written in the project's dataset format (``dataset.yaml``, ``samples.csv``,
per-sample files) under ``--workdir``/data:

- ``windows``: overlapping windows (64 samples, stride 32) of two per-subject sensor recordings
  (``acc``, ``gyr``: ``.npy``, 3 channels), 4 activities in bouts. The activity moves the
  accelerometer's frequency (shifted by each subject's tempo) and the gyroscope's energy (scaled
  by each subject's gain); each subject also has its own per-activity offsets (a cue that is
  perfect inside a subject and worthless across subjects). Splits are subject-disjoint
  (``split: {column: split}`` assigns whole subjects: 14 / 3 / 15) and ``group: subject`` is
  declared, so cross-validation folds keep subjects whole.
- ``views``: eight tabular views of 8 columns, 4 classes; five views each carry the class with
  noise (one view alone reaches about 0.77, the five together about 0.99), three are noise. 150
  validation rows: validation is near-saturated and many designs tie on it.
- ``noisyimg``: an image (28 px bar patterns whose orientation is the class, faint, and absent
  from 35 % of the images) and a small table (two weakly informative columns, two noise columns,
  a categorical distractor); 3 classes, 150 validation rows.

For each dataset, seed (``--seeds``) and number of folds (``--folds``, default ``1,5``) it runs the
real staged search (``autofuse.search``: sampler seed = the seed, ``--time-budget`` = ``--budget``)
in its own work folder, on the **default space with only ``stages.folds`` set** (a space file
``extends: default`` written into ``--workdir``/spaces). ``folds 1`` is the single-split
selection (stage-2 designs ranked on the validation split), ``folds K`` ranks them by K-fold
cross-validation over the fusion rows + validation rows. Then it reads each study back (the
winner from the study's ``winner`` attribute and ``summary.json``; nothing is re-implemented):

- Spearman's rho of (selection estimate, test metric) over the completed stage-2 designs, where the
  selection estimate is the trial's value: the validation metric with folds 1, the mean over folds
  with folds K (``scipy.stats.spearmanr``; same metric on both axes, so higher is better);
- the winner's test metric (single model or ensemble);
- the best in-study hand-designed baseline, chosen by its selection estimate (its name and test);
- the best unimodal (stage-1) model, chosen by its validation value (its test);
- the oracle: the best test metric any completed stage-2 design reached (the test split chose it:
  a bound, not a method) and the winner's gap to it.

It prints a Markdown table (mean over seeds; ``--verbose`` adds one row per seed) and writes the
table and every per-seed figure to ``--out`` (JSON). Every figure comes from this run. A run's
folder is kept: a finished study is read back, an interrupted one resumes.

Usage::

    .venv/bin/python benchmarks/selection.py [--budget 10m] [--seeds 3] [--folds 1,5]
        [--datasets windows,views,noisyimg] [--scale 1.0] [--workdir /tmp/autofuse-selection]
        [--out selection.json] [--verbose]

Full run: 3 datasets x 2 selections x 3 seeds x 10 min = 18 searches, about 3 h 10 min on CPU
(each search overruns its budget by a few seconds to a minute: stage 3 ends, export, summary).
Quick check: ``--budget 40s --seeds 1 --scale 0.3`` (about 5 min).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import yaml
from dataset_shapes import header, write_dataset
from PIL import Image
from search_quality import rows_of, run_study

from autofuse._util import best_first, finite
from autofuse.data import Dataset
from autofuse.data.builders.demo import is_built, mark_built, remove_outputs
from autofuse.metrics import OBJECTIVES
from autofuse.space import load_space
from autofuse.stages import FUSION, UNIMODAL, stage_of

# ---- datasets -----------------------------------------------------------------------------------


def _built(folder: Path, params: dict, owned: list[str]) -> bool:
    """True when ``folder`` already holds this build; else clears what the builder owns."""
    if is_built(folder, params):
        return True
    if folder.exists():
        remove_outputs(folder, ["dataset.yaml", "samples.csv", *owned])
    return False


def build_windows(folder: Path, seed: int = 0, scale: float = 1.0) -> Path:
    """Overlapping windows of two per-subject sensor recordings, subject-disjoint splits."""
    n_bouts = max(4, round(16 * scale))  # per subject; 10 windows per bout
    params = {"builder": "selection.windows", "version": 1, "seed": seed, "bouts": n_bouts}
    if _built(folder, params, ["acc", "gyr"]):
        return folder
    rng = np.random.default_rng(seed)
    fs, win, stride, per_bout, classes = 50.0, 64, 32, 10, 4
    subjects = {"train": 14, "val": 3, "test": 15}
    acc_freq = np.array([1.0, 1.6, 2.2, 2.8])  # Hz, times the subject's tempo
    gyr_amp = np.array([0.35, 0.9, 0.35, 0.9])  # times the subject's gain
    rows: list[dict] = []
    s = 0
    for split, count in subjects.items():
        for _ in range(count):
            s += 1
            tempo, gain = rng.uniform(0.8, 1.2), float(np.exp(rng.normal(0, 0.3)))
            orient = rng.normal(0, 1, (2, 3))
            orient /= np.linalg.norm(orient, axis=1, keepdims=True)
            offsets = rng.normal(0, 0.8, (2, classes, 3))  # per subject and activity
            order = rng.permutation(np.resize(np.arange(classes), n_bouts))
            for b, y in enumerate(order):
                n = (per_bout + 1) * stride
                t = np.arange(n) / fs
                phase = rng.uniform(0, 2 * np.pi, 2)
                acc = np.sin(2 * np.pi * acc_freq[y] * tempo * t + phase[0])[:, None] * orient[0]
                gyr = gain * gyr_amp[y] * np.sin(2 * np.pi * 1.5 * t + phase[1])[:, None]
                gyr = gyr * orient[1]
                sig = {
                    "acc": acc + offsets[0, y] + rng.normal(0, 0.6, (n, 3)),
                    "gyr": gyr + offsets[1, y] + rng.normal(0, 0.6, (n, 3)),
                }
                for w in range(per_bout):
                    i = len(rows)
                    for k, x in sig.items():
                        (folder / k).mkdir(parents=True, exist_ok=True)
                        chunk = x[w * stride : w * stride + win].astype(np.float32)
                        np.save(folder / k / f"{i}.npy", chunk)
                    rows.append(
                        {"id": i, "subject": f"s{s:02d}", "bout": b}
                        | {"acc": f"acc/{i}.npy", "gyr": f"gyr/{i}.npy", "label": f"a{y}"}
                        | {"split": split}
                    )
    mods = "  acc: {type: timeseries, column: acc}\n  gyr: {type: timeseries, column: gyr}\n"
    yml = header("windows", "label", "classification") + mods + "group: subject\n"
    write_dataset(folder, rows, yml)
    mark_built(folder, params)
    return folder


def _split_by_count(i: int, n_train: int, n_val: int) -> str:
    return "train" if i < n_train else "val" if i < n_train + n_val else "test"


def build_views(folder: Path, seed: int = 0, scale: float = 1.0) -> Path:
    """Eight tabular views, five informative: validation near-saturated, designs tie on it."""
    n_train, n_val, n_test = round(1200 * scale), max(40, round(150 * scale)), round(4000 * scale)
    params = {"builder": "selection.views", "version": 1, "seed": seed}
    params |= {"sizes": [n_train, n_val, n_test]}
    if _built(folder, params, []):
        return folder
    rng = np.random.default_rng(seed)
    k, c, informative, strength = 8, 8, 5, 1.16
    centre = np.array([[-1, -1], [-1, 1], [1, -1], [1, 1]], dtype=float)
    mixing = [np.linalg.qr(rng.normal(0, 1, (c, 2)))[0].T for _ in range(k)]  # 2 x c, orthonormal
    rows: list[dict] = []
    n = n_train + n_val + n_test
    for i in range(n):
        y = int(rng.integers(4))
        row: dict = {"id": i}
        for v in range(k):
            s = strength if v < informative else 0.0
            x = s * centre[y] @ mixing[v] + rng.normal(0, 1, c)
            row |= {f"v{v}_{j}": round(float(x[j]), 4) for j in range(c)}
        rows.append(row | {"label": f"k{y}", "split": _split_by_count(i, n_train, n_val)})
    mods = "".join(
        f"  view{v}: {{type: tabular, columns: [{', '.join(f'v{v}_{j}' for j in range(c))}]}}\n"
        for v in range(k)
    )
    write_dataset(folder, rows, header("views", "label", "classification") + mods)
    mark_built(folder, params)
    return folder


def _bar_image(y: int, visible: bool, rng: np.random.Generator) -> np.ndarray:
    """28 x 28 noise; when ``visible`` a faint bar: horizontal (0), vertical (1), diagonal (2)."""
    a = rng.normal(0.5, 0.22, (28, 28))
    if visible:
        contrast, pos, width = rng.uniform(0.12, 0.45), int(rng.integers(6, 22)), 3
        r, c = np.mgrid[0:28, 0:28]
        off = int(rng.integers(-6, 7))
        mask = [
            abs(r - pos) < width / 2 + 0.5,
            abs(c - pos) < width / 2 + 0.5,
            abs(r - c - off) < width / 2 + 0.5,
        ][y]
        a = a + contrast * mask
    return a.clip(0, 1)


def build_noisyimg(folder: Path, seed: int = 0, scale: float = 1.0) -> Path:
    """An image that is often uninformative and a weakly informative table, 3 classes."""
    n_train, n_val, n_test = round(1500 * scale), max(40, round(150 * scale)), round(3000 * scale)
    params = {"builder": "selection.noisyimg", "version": 1, "seed": seed}
    params |= {"sizes": [n_train, n_val, n_test]}
    if _built(folder, params, ["img"]):
        return folder
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for i in range(n_train + n_val + n_test):
        y = int(rng.integers(3))
        img = _bar_image(y, rng.random() > 0.35, rng)
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / "img" / f"{i}.png")
        rows.append(
            {
                "id": i,
                "image": f"img/{i}.png",
                "x1": round(float((y - 1) * 0.9 + rng.normal()), 4),
                "x2": round(float((y == 2) * 0.9 + rng.normal()), 4),
                "x3": round(float(rng.normal()), 4),
                "x4": round(float(rng.normal()), 4),
                "site": str(rng.choice(["a", "b", "c"])),
                "label": f"c{y}",
                "split": _split_by_count(i, n_train, n_val),
            }
        )
    mods = (
        "  picture: {type: image, column: image}\n"
        "  meta: {type: tabular, columns: [x1, x2, x3, x4, site], categorical: [site]}\n"
    )
    write_dataset(folder, rows, header("noisyimg", "label", "classification") + mods)
    mark_built(folder, params)
    return folder


DATASETS: dict[str, Callable[..., Path]] = {
    "windows": build_windows,
    "views": build_views,
    "noisyimg": build_noisyimg,
}


# ---- the searches ---------------------------------------------------------------------------------


def space_file(root: Path, folds: int) -> Path:
    """The default space with ``stages.folds`` set (``extends: default``; ``extends`` replaces
    top-level keys, so the default ``stages:`` block is copied with ``folds`` changed)."""
    stages = load_space("default").stages.model_dump(mode="json") | {"folds": folds}
    doc = {"extends": "default", "name": f"default-folds{folds}", "stages": stages}
    path = root / "spaces" / f"default_folds{folds}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(doc, sort_keys=False)
    if not path.exists() or path.read_text() != text:  # two runs may share --workdir
        path.write_text(text)
    return path


def _test(t: optuna.trial.FrozenTrial, metric: str) -> float | None:
    v = (t.user_attrs.get("test_metrics") or {}).get(metric)
    return float(v) if finite(v) else None


def _encoders(t: optuna.trial.FrozenTrial) -> str:
    encs = (t.user_attrs.get("spec") or {}).get("encoders") or {}
    return ", ".join(f"{m}={e.get('name')}/{e.get('mode')}" for m, e in sorted(encs.items()))


def _spearman(x: list[float], y: list[float]) -> float | None:
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    from scipy.stats import spearmanr

    rho = float(spearmanr(x, y).statistic)
    return rho if math.isfinite(rho) else None


def figures(work: Path, study: str, summary: dict, metric: str, direction: str) -> dict:
    """The per-run figures, read back from the study and its summary."""
    trials = rows_of(work, study)
    fusion = [t for t in trials if stage_of(t) == FUSION]
    scored = [t for t in fusion if finite(t.value) and _test(t, metric) is not None]
    rho = _spearman([float(t.value) for t in scored], [_test(t, metric) for t in scored])  # type: ignore[misc]
    st = optuna.load_study(study_name=study, storage=f"sqlite:///{work / 'trials' / 'autofuse.db'}")
    winner = st.user_attrs.get("winner") or summary.get("winner") or {}
    base = best_first(
        [t for t in fusion if "baseline" in t.user_attrs], lambda t: t.value, direction
    )
    uni = best_first([t for t in trials if stage_of(t) == UNIMODAL], lambda t: t.value, direction)
    oracle = best_first(scored, lambda t: _test(t, metric), direction)  # type: ignore[arg-type,return-value]
    win_test = (winner.get("test") or {}).get(metric)
    oracle_test = _test(oracle[0], metric) if oracle else None
    gap = None
    if finite(win_test) and oracle_test is not None:
        gap = (oracle_test - win_test) if direction == "maximize" else (win_test - oracle_test)
    sel_kinds = Counter((t.user_attrs.get("selection") or {}).get("kind", "val") for t in scored)
    return {
        "stage2_designs": len(scored),
        "selection_kinds": dict(sel_kinds),
        "spearman_selection_vs_test": rho,
        "winner": {
            "kind": winner.get("kind"),
            "trials": winner.get("trials"),
            "design": winner.get("design"),
            "selection": winner.get("val"),
            "selection_label": (summary.get("winner") or {}).get("val_label"),
            "test": win_test,
        },
        "best_baseline": {
            "name": base[0].user_attrs["baseline"] if base else None,
            "trial": base[0].number if base else None,
            "selection": float(base[0].value) if base else None,
            "test": _test(base[0], metric) if base else None,
        },
        "best_unimodal": {
            "trial": uni[0].number if uni else None,
            "encoders": _encoders(uni[0]) if uni else None,
            "validation": float(uni[0].value) if uni else None,
            "test": _test(uni[0], metric) if uni else None,
        },
        "oracle": {"trial": oracle[0].number if oracle else None, "test": oracle_test},
        "winner_gap_to_oracle": gap,
    }


def run_one(data: Path, name: str, folds: int, seed: int, args: argparse.Namespace) -> dict:
    work = args.workdir / "runs" / f"{name}-folds{folds}-seed{seed}"
    study = f"{name}-folds{folds}-seed{seed}"
    metric, direction = OBJECTIVES[Dataset.load(data).task]
    t0 = time.monotonic()
    try:
        summary = run_study(
            data, study, work, args.budget, seed, space=str(space_file(args.workdir, folds))
        )
    except Exception as e:  # one failed search must not lose the others' figures
        sys.stderr.write(f"{study}: {type(e).__name__}: {e}\n")
        return {"seed": seed, "error": f"{type(e).__name__}: {e}"}
    res = {"seed": seed, "wall_s": round(time.monotonic() - t0, 1), "metric": metric}
    return res | figures(work, study, summary, metric, direction)


# ---- the table ----------------------------------------------------------------------------------

#: (column, value of one run, format); "selection estimate" is a stage-2 trial's value (the
#: validation split with folds 1, the mean over folds with folds K)
COLUMNS: tuple[tuple[str, Callable[[dict], object], str], ...] = (
    ("stage-2 designs", lambda r: r.get("stage2_designs"), ".1f"),
    ("Spearman(selection estimate, test)", lambda r: r.get("spearman_selection_vs_test"), ".3f"),
    ("winner: reported figure (*)", lambda r: (r.get("winner") or {}).get("selection"), ".4f"),
    ("winner: test", lambda r: (r.get("winner") or {}).get("test"), ".4f"),
    (
        "best baseline: selection estimate",
        lambda r: (r.get("best_baseline") or {}).get("selection"),
        ".4f",
    ),
    ("best baseline: test", lambda r: (r.get("best_baseline") or {}).get("test"), ".4f"),
    (
        "best unimodal: validation",
        lambda r: (r.get("best_unimodal") or {}).get("validation"),
        ".4f",
    ),
    ("best unimodal: test", lambda r: (r.get("best_unimodal") or {}).get("test"), ".4f"),
    ("oracle: test", lambda r: (r.get("oracle") or {}).get("test"), ".4f"),
    ("winner gap to oracle: test", lambda r: r.get("winner_gap_to_oracle"), "+.4f"),
)


def _mean(values: list) -> float | None:
    v = [x for x in values if finite(x)]
    return statistics.fmean(v) if v else None


def _fmt(x: object, spec: str = ".4f") -> str:
    if isinstance(x, bool) or x is None:
        return "-"
    if isinstance(x, int):
        return str(x)
    return format(x, spec) if isinstance(x, float) else str(x)


def mode_label(folds: int) -> str:
    return "single split (folds 1)" if folds == 1 else f"{folds}-fold CV (folds {folds})"


def aggregate(runs: list[dict]) -> dict:
    ok = [r for r in runs if "error" not in r]
    agg: dict = {head: _mean([get(r) for r in ok]) for head, get, _ in COLUMNS}
    names = Counter(r["best_baseline"]["name"] for r in ok if r["best_baseline"]["name"])
    agg["best baseline (by selection estimate)"] = (
        ", ".join(f"{n} ({c}/{len(ok)})" for n, c in names.most_common()) or "-"
    )
    kinds = Counter(
        f"{r['winner']['kind']}: {r['winner']['selection_label']}"
        for r in ok
        if r["winner"]["kind"]
    )
    agg["winner (kind: figure label)"] = (
        "; ".join(f"{n} ({c}/{len(ok)})" for n, c in kinds.most_common()) or "-"
    )
    agg["seeds"] = len(ok)
    agg["failed"] = len(runs) - len(ok)
    return agg


def markdown(results: dict, verbose: bool) -> str:
    heads = ["dataset", "selection", "seeds", "best baseline (by selection estimate)"]
    heads += [h for h, _, _ in COLUMNS]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for name, modes in results.items():
        for folds, entry in modes.items():
            a = entry["mean"]
            cells = [name, mode_label(int(folds)), f"{a['seeds']} (mean)"]
            cells += [a["best baseline (by selection estimate)"]]
            cells += [_fmt(a[h], f) for h, _, f in COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
            if not verbose:
                continue
            for r in entry["runs"]:
                if "error" in r:
                    lines.append(f"| {name} | {mode_label(int(folds))} | seed {r['seed']} | "
                                 f"failed: {r['error'][:60]} |" + " |" * len(COLUMNS))  # fmt: skip
                    continue
                cells = [name, mode_label(int(folds)), f"seed {r['seed']}"]
                cells += [r["best_baseline"]["name"] or "-"]
                cells += [_fmt(get(r), f) for _, get, f in COLUMNS]
                lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        "\n(*) the winner's figure as summary.json reports it, labelled there (val_label): "
        "validation, in-sample or a selection estimate; per dataset and selection:"
    )
    for name, modes in results.items():
        for folds, entry in modes.items():
            label = entry["mean"]["winner (kind: figure label)"]
            lines.append(f"- {name}, {mode_label(int(folds))}: {label}")
    return "\n".join(lines)


def targets(results: dict) -> list[str]:
    """Issue 19's targets, each checked on the means above (met / missed)."""
    out = []
    for name, modes in results.items():
        for folds, entry in modes.items():
            a, label = entry["mean"], f"{name}, {mode_label(int(folds))}"
            rho, win = a["Spearman(selection estimate, test)"], a["winner: test"]
            for what, ref in (("best baseline", "best baseline: test"),
                              ("best unimodal", "best unimodal: test")):  # fmt: skip
                if win is not None and a[ref] is not None:
                    ok = win >= a[ref]
                    out.append(f"{label}: winner test {win:.4f} >= {what} test {a[ref]:.4f}: "
                               f"{'met' if ok else 'MISSED'}")  # fmt: skip
            if rho is not None:
                out.append(
                    f"{label}: Spearman {rho:.3f} >= 0.5: {'met' if rho >= 0.5 else 'MISSED'}"
                )
        gaps = {f: e["mean"]["winner gap to oracle: test"] for f, e in modes.items()}
        if "1" in gaps and len(gaps) > 1:
            for f, g in gaps.items():
                if f != "1" and g is not None and gaps["1"] is not None:
                    ok = g < gaps["1"]
                    out.append(f"{name}: gap to oracle with {f} folds {g:.4f} < single split "
                               f"{gaps['1']:.4f}: {'met' if ok else 'MISSED'}")  # fmt: skip
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", default="10m", help="--time-budget of each search")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--folds", default="1,5", help="stages.folds values to compare (1 = old)")
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--scale", type=float, default=1.0, help="rows multiplier (quick checks)")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/autofuse-selection"))
    p.add_argument("--out", type=Path, default=None, help="JSON (default: WORKDIR/selection.json)")
    p.add_argument("--verbose", action="store_true", help="one table row per seed too")
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folds = [int(f) for f in args.folds.split(",") if f]
    names = [n for n in args.datasets.split(",") if n]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        p.error(f"unknown dataset(s) {unknown}; known: {', '.join(DATASETS)}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    results: dict[str, dict] = {}
    for name in names:
        data = DATASETS[name](args.workdir / "data" / f"{name}-x{args.scale:g}", args.data_seed,
                              args.scale)  # fmt: skip
        ds = Dataset.load(data)
        sizes = {k: int(len(ds.indices(k))) for k in ("train", "val", "test")}
        print(f"{name}: {len(ds)} rows {sizes}", flush=True)
        results[name] = {}
        for k in folds:
            runs = []
            for seed in range(args.seeds):
                print(f"{name} folds {k} seed {seed}", flush=True)
                runs.append(run_one(data, name, k, seed, args))
            results[name][str(k)] = {"mean": aggregate(runs), "runs": runs}
    table = markdown(results, args.verbose)
    checks = targets(results)
    print(
        f"\nbudget {args.budget} per search, {args.seeds} seed(s), scale {args.scale:g}, default "
        f"space with stages.folds set; selection estimate = the stage-2 value (validation "
        f"split with folds 1, mean over folds with folds K); best unimodal chosen by validation; "
        f"oracle = best test of any completed stage-2 design; total wall "
        f"{(time.monotonic() - t0) / 60:.1f} min\n"
    )
    print(table)
    print("\n" + "\n".join(checks))
    out = args.out or args.workdir / "selection.json"
    doc = {
        "budget": args.budget,
        "seeds": args.seeds,
        "folds": folds,
        "scale": args.scale,
        "space": "default, stages.folds set (extends: default)",
        "table_markdown": table,
        "targets": checks,
        "results": results,
    }
    out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
