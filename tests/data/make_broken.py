"""Generate the tiny test datasets under ``tests/data/good/`` and ``tests/data/broken/<case>/``.

The generated files are committed; rerun after changing this script::

    python tests/data/make_broken.py

Every broken case is a small dataset (6 rows: ids s1..s6, so row k has id sk) with exactly one
thing wrong, except ``three_problems``. ``test_data_broken.py`` holds the expected messages.
"""

from __future__ import annotations

import csv
import io
import shutil
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from PIL import Image

HERE = Path(__file__).parent
GOOD = HERE / "good"
BROKEN = HERE / "broken"


# -- tiny files --------------------------------------------------------------------------------


def png_bytes(seed: int, size: int = 8) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def wav_bytes(seed: int, n: int = 400, rate: int = 8000) -> bytes:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    signal = 0.3 * np.sin(2 * np.pi * (200 + 50 * seed) * t) + 0.05 * rng.standard_normal(n)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((signal * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def npy_bytes(seed: int, steps: int = 16, channels: int = 3) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    np.save(buf, rng.standard_normal((steps, channels)).astype(np.float32))
    return buf.getvalue()


def write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write(path, buf.getvalue())


def write_yaml(path: Path, config: dict[str, Any]) -> None:
    write(path, yaml.safe_dump(config, sort_keys=False))


# -- the good dataset --------------------------------------------------------------------------

CLASSES = ("cat", "dog", "bird")
WORDS = ("a quiet", "a loud", "the small", "one bright", "some odd", "that happy")


def make_good(root: Path = GOOD, n: int = 24) -> None:
    """24 rows, all five modality types, a split column, a few missing cells."""
    rows = []
    for i in range(n):
        k = i + 1
        row: dict[str, Any] = {
            "id": f"g{k:02d}",
            "image_path": f"img/{k:02d}.png",
            "audio_path": f"audio/{k:02d}.wav",
            "review": f"{WORDS[i % len(WORDS)]} {CLASSES[i % 3]} seen on day {k}",
            "age": 20 + (i * 7) % 30,
            "dept": ("north", "south")[i % 2],
            "watch_path": f"ts/{k:02d}.npy",
            "label": CLASSES[i % 3],
            "split": "train" if i < 16 else ("val" if i < 20 else "test"),
        }
        write(root / row["image_path"], png_bytes(k))
        write(root / row["audio_path"], wav_bytes(k))
        write(root / row["watch_path"], npy_bytes(k))
        rows.append(row)
    rows[4]["image_path"] = ""  # row 5: no image
    rows[6]["audio_path"] = ""  # row 7: no audio
    rows[8]["review"] = ""  # row 9: no text
    rows[2]["age"] = ""  # row 3: tabular partly missing (still present)
    rows[10]["age"] = rows[10]["dept"] = ""  # row 11: tabular missing
    rows[12]["watch_path"] = ""  # row 13: no timeseries
    for name in ("img/05.png", "audio/07.wav", "ts/13.npy"):
        (root / name).unlink()
    write_csv(root / "samples.csv", rows)
    write_yaml(
        root / "dataset.yaml",
        {
            "name": "tiny_good",
            "table": "samples.csv",
            "id_column": "id",
            "target": {"column": "label", "task": "classification"},
            "split": {"column": "split"},
            "modalities": {
                "picture": {"type": "image", "column": "image_path"},
                "voice": {"type": "audio", "column": "audio_path"},
                "review": {"type": "text", "column": "review"},
                "meta": {"type": "tabular", "columns": ["age", "dept"], "categorical": ["dept"]},
                "watch": {"type": "timeseries", "column": "watch_path"},
            },
        },
    )


# -- broken cases ------------------------------------------------------------------------------

SPLITS = ("train", "train", "train", "train", "val", "test")


def base_rows(columns: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Six rows ``s1..s6``: labels a/b, text, age; plus file columns from ``columns``."""
    rows = []
    for i in range(6):
        k = i + 1
        row: dict[str, Any] = {"id": f"s{k}", "review": f"sample number {k} says hello"}
        row["age"] = 30 + k
        if "image_path" in columns:
            row["image_path"] = f"img/{k}.png"
        if "audio_path" in columns:
            row["audio_path"] = f"audio/{k}.wav"
        if "watch_path" in columns:
            row["watch_path"] = f"ts/{k}.npy"
        row["label"] = "ab"[i % 2]
        row["split"] = SPLITS[i]
        rows.append(row)
    return rows


def base_config(columns: tuple[str, ...] = ()) -> dict[str, Any]:
    modalities: dict[str, Any] = {
        "review": {"type": "text", "column": "review"},
        "meta": {"type": "tabular", "columns": ["age"]},
    }
    kinds = {
        "image_path": ("picture", "image"),
        "audio_path": ("voice", "audio"),
        "watch_path": ("watch", "timeseries"),
    }
    for column in columns:
        name, kind = kinds[column]
        modalities[name] = {"type": kind, "column": column}
    return {
        "name": "broken",
        "table": "samples.csv",
        "id_column": "id",
        "target": {"column": "label", "task": "classification"},
        "split": {"column": "split"},
        "modalities": modalities,
    }


def write_files(root: Path, rows: list[dict[str, Any]]) -> None:
    makers: dict[str, Callable[[int], bytes]] = {
        "image_path": png_bytes,
        "audio_path": wav_bytes,
        "watch_path": npy_bytes,
    }
    for k, row in enumerate(rows, start=1):
        for column, make in makers.items():
            value = row.get(column)
            if value and not str(value).startswith(("..", "/")):
                write(root / value, make(k))


def case(columns: tuple[str, ...] = ()) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    return base_rows(columns), base_config(columns)


def make_broken(root: Path = BROKEN) -> list[str]:
    """Write every broken case; returns the case names."""
    cases: dict[str, Callable[[Path], None]] = {}

    def register(fn: Callable[[Path], None]) -> Callable[[Path], None]:
        cases[fn.__name__] = fn
        return fn

    def standard(d: Path, rows: list[dict[str, Any]], config: dict[str, Any]) -> None:
        write_files(d, rows)
        write_csv(d / "samples.csv", rows)
        write_yaml(d / "dataset.yaml", config)

    @register
    def missing_file(d: Path) -> None:
        rows, config = case(("image_path",))
        standard(d, rows, config)
        (d / "img/3.png").unlink()  # row 3's image is missing

    @register
    def truncated_image(d: Path) -> None:
        rows, config = case(("image_path",))
        standard(d, rows, config)
        data = png_bytes(2)
        write(d / "img/2.png", data[: len(data) // 2])

    @register
    def not_an_image(d: Path) -> None:
        rows, config = case(("image_path",))
        standard(d, rows, config)
        write(d / "img/4.png", "this is not a png\n")

    @register
    def truncated_wav(d: Path) -> None:
        rows, config = case(("audio_path",))
        standard(d, rows, config)
        data = wav_bytes(5)
        write(d / "audio/5.wav", data[: len(data) - 300])

    @register
    def truncated_npy(d: Path) -> None:
        rows, config = case(("watch_path",))
        standard(d, rows, config)
        data = npy_bytes(6)
        write(d / "ts/6.npy", data[:-40])

    @register
    def channel_mismatch(d: Path) -> None:
        rows, config = case(("watch_path",))
        standard(d, rows, config)
        write(d / "ts/3.npy", npy_bytes(3, channels=2))

    @register
    def path_escapes(d: Path) -> None:
        rows, config = case(("image_path",))
        rows[1]["image_path"] = "../good/img/01.png"
        standard(d, rows, config)

    @register
    def absolute_path_outside(d: Path) -> None:
        rows, config = case(("audio_path",))
        rows[3]["audio_path"] = "/tmp/autofuse-outside.wav"
        standard(d, rows, config)

    @register
    def unknown_column(d: Path) -> None:
        rows, config = case(("image_path",))
        config["modalities"]["picture"]["column"] = "image_pth"
        standard(d, rows, config)

    @register
    def unknown_split_column(d: Path) -> None:
        rows, config = case()
        config["split"] = {"column": "fold"}
        standard(d, rows, config)

    @register
    def unknown_id_column(d: Path) -> None:
        rows, config = case()
        config["id_column"] = "sample_id"
        standard(d, rows, config)

    @register
    def missing_target_column(d: Path) -> None:
        rows, config = case()
        config["target"]["column"] = "labels"
        standard(d, rows, config)

    @register
    def class_without_train(d: Path) -> None:
        rows, config = case()
        rows[5]["label"] = "c"  # row 6 is the only 'c' and it is in test
        standard(d, rows, config)

    @register
    def empty_text(d: Path) -> None:
        rows, config = case()
        for row in rows:
            row["review"] = ""
        standard(d, rows, config)

    @register
    def empty_target(d: Path) -> None:
        rows, config = case()
        rows[3]["label"] = ""
        standard(d, rows, config)

    @register
    def bad_regression_target(d: Path) -> None:
        rows, config = case()
        for k, row in enumerate(rows):
            row["label"] = 1.5 * k
        rows[1]["label"] = "n/a"
        config["target"]["task"] = "regression"
        standard(d, rows, config)

    @register
    def duplicate_ids(d: Path) -> None:
        rows, config = case()
        rows[4]["id"] = "s2"
        standard(d, rows, config)

    @register
    def bad_split_value(d: Path) -> None:
        rows, config = case()
        rows[2]["split"] = "training"
        standard(d, rows, config)

    @register
    def empty_split(d: Path) -> None:
        rows, config = case()
        rows[5]["split"] = "val"
        standard(d, rows, config)

    @register
    def ratio_split_too_small(d: Path) -> None:
        rows, config = case()
        config["split"] = {"val": 0.1, "test": 0.1, "seed": 0, "group": "label"}
        standard(d, rows, config)

    @register
    def unknown_yaml_key(d: Path) -> None:
        rows, config = case()
        config["modalities"]["review"] = {"type": "text", "colum": "review"}
        standard(d, rows, config)

    @register
    def bad_modality_type(d: Path) -> None:
        rows, config = case()
        config["modalities"]["review"]["type"] = "video"
        standard(d, rows, config)

    @register
    def bad_yaml(d: Path) -> None:
        rows, config = case()
        standard(d, rows, config)
        write(d / "dataset.yaml", "name: broken\ntable: samples.csv\ntarget: {column: label\n")

    @register
    def missing_yaml(d: Path) -> None:
        rows, _ = case()
        write_csv(d / "samples.csv", rows)

    @register
    def missing_table(d: Path) -> None:
        _, config = case()
        write_yaml(d / "dataset.yaml", config)

    @register
    def unreadable_table(d: Path) -> None:
        _, config = case()
        config["table"] = "samples.parquet"
        write_yaml(d / "dataset.yaml", config)
        write(d / "samples.parquet", "this is not parquet\n")

    # -- numbers: non-finite values and non-numeric cells in a numeric column (age) ----------

    @register
    def inf_in_numeric(d: Path) -> None:
        rows, config = case()
        rows[2]["age"] = "inf"
        standard(d, rows, config)

    @register
    def overflow_in_numeric(d: Path) -> None:
        rows, config = case()
        rows[1]["age"] = "1e400"  # parses to inf
        standard(d, rows, config)

    @register
    def nan_literal_in_numeric(d: Path) -> None:
        rows, config = case()
        rows[3]["age"] = "NaN"  # the default policy (non_finite: error) refuses it
        standard(d, rows, config)

    @register
    def typo_in_numeric(d: Path) -> None:
        rows, config = case()
        rows[4]["age"] = "3O"  # a letter O: one typo must not turn the column categorical
        standard(d, rows, config)

    @register
    def nan_strings_in_numeric(d: Path) -> None:
        rows, config = case()
        rows[1]["age"] = "nan"
        rows[4]["age"] = "n/a"
        standard(d, rows, config)

    @register
    def inf_in_parquet(d: Path) -> None:
        rows, config = case()
        frame = pd.DataFrame(rows).astype({"age": "float64"})
        frame.loc[5, "age"] = -np.inf  # a float column: the value itself is non-finite
        config["table"] = "samples.parquet"
        write_yaml(d / "dataset.yaml", config)
        d.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(d / "samples.parquet", index=False)

    @register
    def declared_numeric(d: Path) -> None:
        rows, config = case()
        for row, word in zip(rows[:3], ("old", "young", "old"), strict=True):
            row["age"] = word  # listed as numeric: every non-number is reported
        config["modalities"]["meta"]["numeric"] = ["age"]
        standard(d, rows, config)

    @register
    def inf_regression_target(d: Path) -> None:
        rows, config = case()
        for k, row in enumerate(rows):
            row["label"] = 1.5 * k
        rows[2]["label"] = "-inf"
        config["target"]["task"] = "regression"
        standard(d, rows, config)

    # -- issue 18: one-class targets, NaN / inf in .npy arrays, names with control characters -

    @register
    def single_class_target(d: Path) -> None:
        rows, config = case()
        for row in rows:
            row["label"] = "a"  # one class: a model could only ever say 'a'
        standard(d, rows, config)

    @register
    def constant_regression_target(d: Path) -> None:
        rows, config = case()
        for k, row in enumerate(rows):
            row["label"] = 2.5 if row["split"] == "train" else 1.5 * k
        config["target"]["task"] = "regression"
        standard(d, rows, config)

    @register
    def nan_in_npy(d: Path) -> None:
        rows, config = case(("watch_path",))
        standard(d, rows, config)
        values = np.load(io.BytesIO(npy_bytes(2)))
        values[5, 1] = np.nan
        buf = io.BytesIO()
        np.save(buf, values)
        write(d / "ts/2.npy", buf.getvalue())

    @register
    def inf_in_npy(d: Path) -> None:
        rows, config = case(("watch_path",))
        standard(d, rows, config)
        values = np.load(io.BytesIO(npy_bytes(4))).astype(np.float64)
        values[0, 2] = -np.inf
        values[7, 0] = np.inf
        buf = io.BytesIO()
        np.save(buf, values)
        write(d / "ts/4.npy", buf.getvalue())

    @register
    def newline_in_modality_name(d: Path) -> None:
        rows, config = case()
        config["modalities"]["review\n"] = config["modalities"].pop("review")
        standard(d, rows, config)

    @register
    def newline_in_column_name(d: Path) -> None:
        rows, config = case()
        config["target"]["column"] = "label\n"
        standard(d, rows, config)

    # -- issue 19: the group column ---------------------------------------------------------

    @register
    def unknown_group_column(d: Path) -> None:
        rows, config = case()
        config["group"] = "subject"  # no such column
        standard(d, rows, config)

    @register
    def three_problems(d: Path) -> None:
        rows, config = case(("image_path",))
        rows[3]["id"] = "s3"  # 2: duplicate id
        rows[4]["label"] = ""  # 3: empty target
        standard(d, rows, config)
        (d / "img/1.png").unlink()  # 1: file not found

    if root.exists():
        shutil.rmtree(root)
    for name, build in cases.items():
        build(root / name)
    return list(cases)


def main() -> None:
    if GOOD.exists():
        shutil.rmtree(GOOD)
    make_good()
    names = make_broken()
    too_big = [
        p
        for p in HERE.rglob("*")
        if p.is_file() and p.stat().st_size >= 5000 and p.suffix not in (".py",)
    ]
    assert not too_big, f"generated files must stay below 5 KB: {too_big}"
    print(f"wrote {GOOD} and {len(names)} broken cases under {BROKEN}")


if __name__ == "__main__":
    main()
