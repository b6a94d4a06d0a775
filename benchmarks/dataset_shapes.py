"""Does a short default search run end to end on the dataset shapes autofuse is meant for?

It writes five small synthetic datasets, each with its signal spread over the modalities, in the
shapes users bring (none of them is the demo or AV-MNIST):

- ``sensor``: two multichannel time series (accelerometer, gyroscope), 3 classes;
- ``texttab``: a short text and a table with a categorical column, 2 classes;
- ``photoreg``: four photos and a table, a regression target;
- ``views``: six tabular views of 20 columns, 4 classes, only half the views informative;
- ``imaud``: an image and a WAV recording, 3 classes;

then runs ``autofuse search --time-budget B --refit-full`` (the default space, a fresh process
each) on every one, and prints two tables (every figure measured in this run):

1. exit code, wall time, trials, the winner's kind and design, its validation and test metric;
2. how the stages spent the budget (issue 20): the wall time against the budget; each stage's
   wall span against its share (stage ends are points of one clock: time a stage leaves passes
   on); stage 3's finalists x seeds, their completed epochs and each design's seed spread (std
   of the seeds' validation values); each modality's best stage-1 model (by validation) on test
   against a plain reference trained on every training row here (scikit-learn: an MLP 128-64
   with early stopping on the flattened prepared inputs, TF-IDF + logistic regression for text);
   the winner's test without and with ``--refit-full``.

Usage: .venv/bin/python benchmarks/dataset_shapes.py [--budget 3m] [--only sensor,views]
       [--workdir /tmp/autofuse-shapes]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = ("train", "val", "test")


def split_of(i: int, n: int) -> str:
    """70 / 15 / 15 by row order (rows are drawn independently)."""
    return SPLITS[0] if i < 0.7 * n else SPLITS[1] if i < 0.85 * n else SPLITS[2]


def write_dataset(folder: Path, rows: list[dict], yaml: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "samples.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (folder / "dataset.yaml").write_text(yaml)
    return folder


def header(name: str, target: str, task: str) -> str:
    return (
        f"name: {name}\ntable: samples.csv\nid_column: id\n"
        f"target: {{column: {target}, task: {task}}}\nsplit: {{column: split}}\nmodalities:\n"
    )


def write_image(path: Path, brightness: float, square: bool, rng: np.random.Generator) -> None:
    a = rng.normal(0.3 + 0.4 * brightness, 0.15, (28, 28)).clip(0, 1)
    if square:
        a[8:20, 8:20] = 1.0
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((a * 255).astype(np.uint8)).save(path)


def write_wav(path: Path, signal: np.ndarray, rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((signal.clip(-1, 1) * 32767).astype(np.int16).tobytes())


def sensor(folder: Path, rng: np.random.Generator, n: int = 300) -> Path:
    rows, t = [], np.linspace(0, 1, 64)[:, None]
    for i in range(n):
        y = int(rng.integers(3))
        for k, freq in (("acc", 2 + y), ("gyr", 2 + (y == 2))):
            phase = rng.normal(0, 1, (1, 3))
            x = np.sin(2 * np.pi * freq * t + phase) + rng.normal(0, 0.5, (64, 3))
            (folder / k).mkdir(parents=True, exist_ok=True)
            np.save(folder / k / f"{i}.npy", x.astype(np.float32))
        rows.append(
            {"id": i, "acc": f"acc/{i}.npy", "gyr": f"gyr/{i}.npy", "label": f"c{y}"}
            | {"split": split_of(i, n)}
        )
    mods = "  acc: {type: timeseries, column: acc}\n  gyr: {type: timeseries, column: gyr}\n"
    return write_dataset(folder, rows, header("sensor", "label", "classification") + mods)


def texttab(folder: Path, rng: np.random.Generator, n: int = 400) -> Path:
    good, bad = ["great", "fine", "perfect", "fast"], ["awful", "late", "broken", "cheap"]
    rows = []
    for i in range(n):
        y = int(rng.integers(2))
        words = rng.choice(good if y else bad, 2).tolist() + rng.choice(good + bad, 2).tolist()
        rows.append(
            {
                "id": i,
                "review": " ".join(words) + " product",
                "price": round(float(rng.normal(10 + 2 * y, 4)), 2),
                "store": str(rng.choice(["a", "b", "c"])),
                "label": ["no", "yes"][y],
                "split": split_of(i, n),
            }
        )
    mods = (
        "  review: {type: text, column: review}\n"
        "  meta: {type: tabular, columns: [price, store], categorical: [store]}\n"
    )
    return write_dataset(folder, rows, header("texttab", "label", "classification") + mods)


def photoreg(folder: Path, rng: np.random.Generator, n: int = 200) -> Path:
    views = ("front", "back", "kitchen", "garden")
    rows = []
    for i in range(n):
        light, area = rng.uniform(0, 1, len(views)), float(rng.uniform(50, 150))
        row: dict = {"id": i}
        for k, v in enumerate(views):
            write_image(folder / v / f"{i}.png", light[k], k == 0 and light[0] > 0.5, rng)
            row[v] = f"{v}/{i}.png"
        price = area * 2 + 50 * light.mean() + rng.normal(0, 5)
        row |= {"area": round(area, 1), "rooms": int(rng.integers(1, 5))}
        rows.append(row | {"price": round(price, 2), "split": split_of(i, n)})
    mods = "".join(f"  {v}: {{type: image, column: {v}}}\n" for v in views)
    mods += "  facts: {type: tabular, columns: [area, rooms]}\n"
    return write_dataset(folder, rows, header("photoreg", "price", "regression") + mods)


def views(folder: Path, rng: np.random.Generator, n: int = 600, k: int = 6, c: int = 20) -> Path:
    rows = []
    for i in range(n):
        y = int(rng.integers(4))
        row: dict = {"id": i}
        for v in range(k):
            x = rng.normal(0, 1, c)
            x[:2] += (0.8 if v < k // 2 else 0.0) * np.array([y % 2, y // 2])
            row |= {f"v{v}_{j}": round(float(x[j]), 4) for j in range(c)}
        rows.append(row | {"label": f"k{y}", "split": split_of(i, n)})
    mods = "".join(
        f"  view{v}: {{type: tabular, columns: [{', '.join(f'v{v}_{j}' for j in range(c))}]}}\n"
        for v in range(k)
    )
    return write_dataset(folder, rows, header("views", "label", "classification") + mods)


def imaud(folder: Path, rng: np.random.Generator, n: int = 300, rate: int = 8000) -> Path:
    rows, t = [], np.arange(rate // 2) / rate
    for i in range(n):
        y = int(rng.integers(3))
        write_image(folder / "img" / f"{i}.png", y / 2 + rng.normal(0, 0.3), y == 1, rng)
        tone = 0.4 * np.sin(2 * np.pi * (300 + 200 * (y == 2)) * t)
        write_wav(folder / "wav" / f"{i}.wav", tone + rng.normal(0, 0.3, t.size), rate)
        rows.append(
            {"id": i, "image": f"img/{i}.png", "sound": f"wav/{i}.wav", "label": f"d{y}"}
            | {"split": split_of(i, n)}
        )
    mods = "  picture: {type: image, column: image}\n  sound: {type: audio, column: sound}\n"
    return write_dataset(folder, rows, header("imaud", "label", "classification") + mods)


SHAPES: dict[str, Callable[[Path, np.random.Generator], Path]] = {
    "sensor": sensor,
    "texttab": texttab,
    "photoreg": photoreg,
    "views": views,
    "imaud": imaud,
}


def run(name: str, data: Path, work: Path, budget: str) -> dict:
    """One ``autofuse search`` in a fresh process; its exit code, wall time and summary."""
    cmd = [sys.executable, "-m", "autofuse.cli", "search", str(data), "--study", name]
    cmd += ["--time-budget", budget, "--workdir", str(work), "--mlflow-uri", "off", "--refit-full"]
    t0 = time.monotonic()
    r = subprocess.run([*cmd, "--no-progress"], capture_output=True, text=True)
    wall = time.monotonic() - t0
    summary = work / "trials" / name / "summary.json"
    done = json.loads(summary.read_text()) if r.returncode == 0 and summary.exists() else {}
    if r.returncode:
        sys.stderr.write(f"{name}: exit {r.returncode}\n{r.stderr[-2000:]}\n")
    return {"rc": r.returncode, "wall": wall, "summary": done}


def row(name: str, res: dict) -> str:
    s = res["summary"]
    w, metric = s.get("winner") or {}, s.get("metric", "?")
    fusion = (s.get("spec") or {}).get("fusion") or {}
    design = f"{fusion.get('family', '?')}.{fusion.get('method', '?')} at {fusion.get('point')}"
    counts = s.get("trials") or {}
    trials = f"{counts.get('completed', 0)} + {counts.get('pruned', 0)} pruned"
    val, test = w.get("val"), (w.get("test") or {}).get(metric)
    return (
        f"| {name} | {res['rc']} | {res['wall']:.0f} | {trials} | {w.get('kind', '-')} "
        f"| {design} | {metric} | {_num(val)} | {_num(test)} |"
    )


def _num(x: object) -> str:
    return f"{x:.4f}" if isinstance(x, float) else "-"


# ---- how the stages spent the budget ------------------------------------------------------------

SHARES = {"unimodal": 0.25, "fusion": 0.55, "finalist": 0.20}  # the default space's stages.budget


def stage_row(name: str, res: dict, work: Path, budget_s: float, data: Path) -> str:
    """One row of the stages table (see the module docstring)."""
    import optuna

    s = res["summary"]
    if not s:
        return f"| {name} | failed |" + " |" * 7
    metric = s["metric"]
    st = optuna.load_study(study_name=name, storage=f"sqlite:///{work / 'trials/autofuse.db'}")
    spans = []
    for stage, share in SHARES.items():
        ts = [t for t in st.trials if t.user_attrs.get("stage") == stage and t.datetime_complete]
        span = (
            (
                max(t.datetime_complete for t in ts) - min(t.datetime_start for t in ts)
            ).total_seconds()
            if ts
            else 0.0
        )
        spans.append(f"{stage} {span:.0f}/{share * budget_s:.0f}")
    plan = st.user_attrs.get("finalist_plan") or {}
    fin = [t for t in st.trials if t.user_attrs.get("stage") == "finalist" and t.value is not None]
    by_design: dict[int, list[float]] = {}
    for t in fin:
        by_design.setdefault(t.user_attrs["finalist_of"], []).append(t.value)
    spread = ", ".join(f"#{d}: {np.std(v):.4f} ({len(v)})" for d, v in sorted(by_design.items()))
    epochs = sorted(t.user_attrs.get("epochs_run") or 0 for t in fin)
    stage3 = (
        "skipped"
        if plan.get("skipped")
        else f"{plan.get('designs', 0)} x {plan.get('seeds', 0)}, epochs {epochs}"
    )
    refs = reference_scores(data, metric)
    uni = []
    for m, ref in refs.items():
        runs = [
            t
            for t in st.trials
            if t.user_attrs.get("stage") == "unimodal"
            and (t.user_attrs.get("unimodal") or {}).get("modality") == m
            and t.value is not None
        ]
        sign = 1 if s["direction"] == "maximize" else -1
        best = max(runs, key=lambda t: sign * t.value) if runs else None
        got = (best.user_attrs.get("test_metrics") or {}).get(metric) if best else None
        uni.append(f"{m} {_num(got)} / {_num(ref)}")
    w = s.get("winner") or {}
    refit = ((s.get("refit_full") or {}).get("test") or {}).get(metric)
    return (
        f"| {name} | {res['wall']:.0f} / {budget_s:.0f} ({100 * res['wall'] / budget_s - 100:+.1f} %) "
        f"| {'; '.join(spans)} | {stage3} | {spread or '-'} | {'; '.join(uni)} "
        f"| {_num((w.get('test') or {}).get(metric))} | {_num(refit)} |"
    )


def reference_scores(data: Path, metric: str) -> dict[str, float]:
    """Per modality, a plain scikit-learn model trained on every training row, on test."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from autofuse.data import Dataset
    from autofuse.encoders import EncoderSpec, prepare_modality
    from autofuse.metrics import compute_metrics
    from autofuse.space import load_space
    from autofuse.train import TrainData

    ds = Dataset.load(data)
    labels = TrainData.from_dataset(ds, inputs={})
    tr, te = labels.splits["train"], labels.splits["test"]
    y = labels.y_raw
    out = {}
    space = load_space("default")
    for m in ds.modality_names:
        mtype = ds.modality_type(m)
        choice = next(c for c in space.encoder_choices(mtype) if "scratch" in c["modes"])
        prepared = prepare_modality(ds, m, EncoderSpec(name=choice["name"], mode="scratch"))
        if isinstance(prepared.inputs, list):  # raw text
            x = np.array([str(v or "") for v in prepared.inputs], dtype=object)
            model = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=2000))
        else:
            parts = (
                list(prepared.inputs.values())  # a table: numeric and categorical tensors
                if isinstance(prepared.inputs, dict)
                else [prepared.inputs]
            )
            x = np.concatenate(
                [np.asarray(t, dtype=np.float32).reshape(len(ds), -1) for t in parts], axis=1
            )
            x = np.nan_to_num(x)
            net = MLPClassifier if ds.task == "classification" else MLPRegressor
            model = make_pipeline(
                StandardScaler(),
                net(
                    hidden_layer_sizes=(128, 64),
                    early_stopping=True,
                    n_iter_no_change=10,
                    max_iter=500,
                    random_state=0,
                ),
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x[tr], y[tr])
        if ds.task == "classification":
            proba = np.zeros((len(te), int(y.max()) + 1))
            proba[:, model.classes_.astype(int)] = model.predict_proba(x[te])
            outputs = proba
        else:
            outputs = model.predict(x[te]).reshape(-1, 1)
        out[m] = compute_metrics(ds.task, y[te], outputs).get(metric)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--budget", default="3m")
    p.add_argument("--only", default=",".join(SHAPES))
    p.add_argument("--workdir", default="/tmp/autofuse-shapes")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.workdir)
    from autofuse.options import parse_duration

    budget_s = parse_duration(args.budget)
    lines = [
        f"budget {args.budget} per dataset, default space, CPU",
        "| dataset | exit | wall s | trials | winner | design | metric | val | test |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    stages = [
        "\nhow the stages spent it (span / share in s; stage 3: designs x seeds and epochs run; "
        "seed spread: std of each design's seeds' validation values (seeds); stage-1 test / "
        "plain reference's test per modality; winner test without / with --refit-full)",
        "| dataset | wall / budget s | stages | stage 3 | seed spread | stage 1 vs reference "
        "| winner test | refit test |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in args.only.split(","):
        data = SHAPES[name](work / "data" / name, np.random.default_rng(args.seed))
        res = run(name, data, work, args.budget)
        lines.append(row(name, res))
        stages.append(stage_row(name, res, work, budget_s, data))
    sys.stdout.write("\n".join(lines + stages) + "\n")


if __name__ == "__main__":
    main()
