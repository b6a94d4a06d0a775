"""Does a short default search run end to end on the dataset shapes autofuse is meant for?

It writes five small synthetic datasets, each with its signal spread over the modalities, in the
shapes users bring (none of them is the demo or AV-MNIST):

- ``sensor``: two multichannel time series (accelerometer, gyroscope), 3 classes;
- ``texttab``: a short text and a table with a categorical column, 2 classes;
- ``photoreg``: four photos and a table, a regression target;
- ``views``: six tabular views of 20 columns, 4 classes, only half the views informative;
- ``imaud``: an image and a WAV recording, 3 classes;

then runs ``autofuse search --time-budget B`` (the default space, a fresh process each) on every
one, and prints a table: exit code, wall time, trials, the winner's kind and design, its
validation and test metric. A logistic or ridge regression on the tabular columns alone is no
reference here: the point is that every shape searches, picks a winner and exports it.

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
    cmd += ["--time-budget", budget, "--workdir", str(work), "--mlflow-uri", "off"]
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--budget", default="3m")
    p.add_argument("--only", default=",".join(SHAPES))
    p.add_argument("--workdir", default="/tmp/autofuse-shapes")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.workdir)
    lines = [
        f"budget {args.budget} per dataset, default space, CPU",
        "| dataset | exit | wall s | trials | winner | design | metric | val | test |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in args.only.split(","):
        data = SHAPES[name](work / "data" / name, np.random.default_rng(args.seed))
        lines.append(row(name, run(name, data, work, args.budget)))
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
