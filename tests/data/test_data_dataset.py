"""Loading, splits, targets, missing-modality semantics, inference and fingerprints."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from autofuse.data import Dataset, DatasetConfig, DatasetError, Problem, validate_dataset
from autofuse.data.validate import check_wav, format_problems

GOOD = Path(__file__).parent / "good"


@pytest.fixture
def good_copy(tmp_path: Path) -> Path:
    dest = tmp_path / "good"
    shutil.copytree(GOOD, dest)
    return dest


def write_dataset(root: Path, rows: list[dict], config: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(root / "samples.csv", index=False)
    (root / "dataset.yaml").write_text(yaml.safe_dump({"table": "samples.csv", **config}))
    return root


# -- the good dataset ------------------------------------------------------------------------


def test_good_dataset_loads() -> None:
    ds = Dataset.load(GOOD)
    assert len(ds) == 24 and ds.name == "tiny_good" and ds.task == "classification"
    assert ds.modality_names == ["picture", "voice", "review", "meta", "watch"]
    assert [ds.modality_type(n) for n in ds.modality_names] == [
        "image",
        "audio",
        "text",
        "tabular",
        "timeseries",
    ]
    assert ds.classes == ["bird", "cat", "dog"]
    assert ds.y.dtype == np.int64 and ds.y.shape == (24,)
    assert [ds.classes[k] for k in ds.y[:3]] == ["cat", "dog", "bird"]
    assert [len(ds.indices(s)) for s in ("train", "val", "test")] == [16, 4, 4]
    assert ds.indices("val").dtype == np.int64
    assert isinstance(ds.frame.index, pd.RangeIndex)

    paths = ds.file_paths("picture")
    assert paths[4] is None and paths[0] == GOOD.absolute() / "img" / "01.png"
    assert not ds.present("picture")[4] and ds.present("picture").sum() == 23
    assert ds.texts("review")[8] is None and ds.texts("review")[0].startswith("a quiet cat")
    assert ds.tabular_columns("meta") == (["age"], ["dept"])
    tab = ds.tabular_frame("meta")
    assert tab["age"].dtype == np.float64 and np.isnan(tab["age"][2])
    assert ds.present("meta")[2] and not ds.present("meta")[10]  # partly vs. all cells empty
    assert ds.file_paths("watch")[12] is None

    info = ds.info()
    assert json.loads(json.dumps(info)) == info
    assert info["splits"] == {"train": 16, "val": 4, "test": 4}
    assert info["modalities"]["watch"] == "timeseries"
    assert info["missing_rate"]["voice"] == pytest.approx(1 / 24, abs=1e-5)
    assert info["fingerprint"] == ds.fingerprint() and len(ds.fingerprint()) == 64


def test_validate_good_dataset_gives_summary() -> None:
    report = validate_dataset(GOOD / "dataset.yaml")  # the yaml path works too
    assert report.ok and report.problems == []
    assert report.summary is not None
    assert report.summary["task"] == "classification"
    assert report.summary["classes"] == ["bird", "cat", "dog"]
    assert "fingerprint" not in report.summary


def test_accessor_errors() -> None:
    ds = Dataset.load(GOOD)
    with pytest.raises(KeyError):
        ds.present("nope")
    with pytest.raises(TypeError):
        ds.file_paths("review")
    with pytest.raises(ValueError):
        ds.indices("training")


# -- fingerprints ----------------------------------------------------------------------------


def test_fingerprint_changes_with_image_bytes(good_copy: Path) -> None:
    before = Dataset.load(good_copy).fingerprint()
    assert Dataset.load(good_copy).fingerprint() == before  # deterministic
    assert Dataset.load(GOOD).fingerprint() == before  # independent of the folder's location
    shutil.copy(good_copy / "img" / "03.png", good_copy / "img" / "02.png")  # still a valid PNG
    assert Dataset.load(good_copy).fingerprint() != before


def test_fingerprint_changes_with_table(good_copy: Path) -> None:
    before = Dataset.load(good_copy).fingerprint()
    csv = good_copy / "samples.csv"
    csv.write_text(csv.read_text().replace("a quiet cat", "a silent cat"))
    assert Dataset.load(good_copy).fingerprint() != before


# -- targets ---------------------------------------------------------------------------------


def _rows(n: int = 12) -> list[dict]:
    return [
        {
            "id": f"r{i}",
            "note": f"row {i} has some words",
            "x": float(i),
            "split": "train" if i < 8 else ("val" if i < 10 else "test"),
        }
        for i in range(n)
    ]


def test_multilabel(tmp_path: Path) -> None:
    rows = _rows()
    labels = ["a|b", "b", "c|a", "a", "b|c", "c", "a", "b", "a|c", "b", "c", "a|b|c"]
    for row, label in zip(rows, labels, strict=True):
        row["tags"] = label
    root = write_dataset(
        tmp_path / "ml",
        rows,
        {
            "name": "ml",
            "id_column": "id",
            "target": {"column": "tags", "task": "multilabel"},
            "split": {"column": "split"},
            "modalities": {"note": {"type": "text", "column": "note"}},
        },
    )
    ds = Dataset.load(root)
    assert ds.classes == ["a", "b", "c"]
    assert ds.y.dtype == np.float32 and ds.y.shape == (12, 3)
    assert ds.y[0].tolist() == [1, 1, 0] and ds.y[11].tolist() == [1, 1, 1]
    assert ds.info()["class_counts"] == {"a": 6, "b": 6, "c": 6}


def test_multilabel_custom_separator() -> None:
    df = pd.DataFrame({"t": ["x;y", "y", "x", "y ; x"] * 5, "v": range(20)})
    config = DatasetConfig.model_validate(
        {
            "name": "sep",
            "table": "t.csv",
            "target": {"column": "t", "task": "multilabel", "separator": ";"},
            "modalities": {"tab": {"type": "tabular", "columns": ["v"]}},
        }
    )
    ds = Dataset(config, df, Path("."))
    assert ds.task == "multilabel" and ds.classes == ["x", "y"]
    assert ds.y[:4].tolist() == [[1, 1], [0, 1], [1, 0], [1, 1]]


def test_regression(tmp_path: Path) -> None:
    rows = _rows()
    for i, row in enumerate(rows):
        row["price"] = 10.5 + 3.25 * i
    root = write_dataset(
        tmp_path / "reg",
        rows,
        {
            "name": "reg",
            "target": {"column": "price", "task": "regression"},
            "split": {"column": "split"},
            "modalities": {"note": {"type": "text", "column": "note"}},
        },
    )
    ds = Dataset.load(root)
    assert ds.classes is None and ds.y.dtype == np.float32
    assert ds.y[1] == pytest.approx(13.75)
    assert ds.info()["classes"] is None


def test_class_labels_keep_their_spelling() -> None:
    df = pd.DataFrame({"label": [3, 10, 3, 10, 7] * 4, "v": np.arange(20.0)})
    ds = Dataset.from_dataframe(df, target="label")
    assert ds.task == "classification"
    assert ds.classes == ["10", "3", "7"]  # sorted strings
    assert ds.y.dtype == np.int64 and ds.classes[ds.y[0]] == "3"


# -- splits ----------------------------------------------------------------------------------


def test_ratio_split_with_group_keeps_groups_together() -> None:
    n = 60
    df = pd.DataFrame(
        {
            "subject": [f"p{i // 4}" for i in range(n)],  # 15 subjects x 4 rows
            "label": ["a", "b", "c"] * (n // 3),
            "v": np.arange(n, dtype=float),
        }
    )
    split = {"val": 0.2, "test": 0.2, "seed": 3, "group": "subject"}
    ds = Dataset.from_dataframe(df, target="label", split=split)
    assert "subject" not in ds.tabular_columns("tabular")[0] + ds.tabular_columns("tabular")[1]
    per_group = pd.Series(ds.split).groupby(df["subject"]).nunique()
    assert (per_group == 1).all()
    sizes = {s: len(ds.indices(s)) for s in ("train", "val", "test")}
    assert all(sizes.values()) and sum(sizes.values()) == n
    again = Dataset.from_dataframe(df, target="label", split=split)
    assert (again.split == ds.split).all()  # deterministic by seed
    other = Dataset.from_dataframe(df, target="label", split={**split, "seed": 4})
    assert (other.split != ds.split).any()


def test_ratio_split_stratifies_classes() -> None:
    df = pd.DataFrame({"label": ["a"] * 40 + ["b"] * 20 + ["rare"], "v": np.arange(61.0)})
    ds = Dataset.from_dataframe(df, target="label", split={"val": 0.15, "test": 0.15, "seed": 0})
    train = set(ds.y[ds.indices("train")].tolist())
    assert train == {0, 1, 2}  # the single 'rare' row stays in train
    for s in ("val", "test"):
        labels = [ds.classes[k] for k in ds.y[ds.indices(s)]]
        assert 5 <= labels.count("a") <= 7 and 2 <= labels.count("b") <= 4


# -- missing-modality semantics ---------------------------------------------------------------


def test_multi_column_modality_missing_only_when_all_cells_empty(tmp_path: Path) -> None:
    rows = _rows()
    for i, row in enumerate(rows):
        row["label"] = "ab"[i % 2]
        row["title"] = "" if i in (1, 2) else f"title {i}"
        row["body"] = "" if i in (2, 3) else f"body of {i}"
        row["age"] = "" if i in (4, 5) else 30 + i
        row["dept"] = "" if i in (5, 6) else "xy"[i % 2]
    root = write_dataset(
        tmp_path / "mc",
        rows,
        {
            "name": "mc",
            "target": {"column": "label"},
            "split": {"column": "split"},
            "modalities": {
                "doc": {"type": "text", "columns": ["title", "body"]},
                "meta": {"type": "tabular", "columns": ["age", "dept"], "categorical": ["dept"]},
            },
        },
    )
    ds = Dataset.load(root)
    assert np.flatnonzero(~ds.present("doc")).tolist() == [2]
    assert np.flatnonzero(~ds.present("meta")).tolist() == [5]
    texts = ds.texts("doc")
    assert texts[0] == "title 0\nbody of 0" and texts[1] == "body of 1" and texts[2] is None
    tab = ds.tabular_frame("meta")
    assert np.isnan(tab["age"][4]) and tab["dept"][4] == "x" and tab["dept"][6] is None
    assert ds.info()["missing_rate"]["doc"] == pytest.approx(1 / 12, abs=1e-5)


# -- from_dataframe --------------------------------------------------------------------------


def test_from_dataframe_infers_types(good_copy: Path) -> None:
    df = pd.read_csv(good_copy / "samples.csv", dtype=str, keep_default_na=False)
    df["score"] = np.linspace(0, 1, len(df))
    ds = Dataset.from_dataframe(df, target="label", root=good_copy, name="inferred")
    types = {n: ds.modality_type(n) for n in ds.modality_names}
    assert types == {
        "image_path": "image",
        "audio_path": "audio",
        "review": "text",
        "watch_path": "timeseries",
        "tabular": "tabular",
    }
    assert ds.tabular_columns("tabular") == (["age", "score"], ["dept"])
    assert ds.config.id_column == "id"  # unique column named id
    assert ds.task == "classification"
    assert [len(ds.indices(s)) for s in ("train", "val", "test")] == [16, 4, 4]  # split column
    assert ds.file_paths("image_path")[0] == good_copy / "img" / "01.png"


def test_from_dataframe_infers_regression_and_default_split() -> None:
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "y": rng.normal(size=100),
            "a": rng.normal(size=100),
            "colour": rng.choice(["red", "green"], size=100),
        }
    )
    ds = Dataset.from_dataframe(df, target="y")
    assert ds.task == "regression" and ds.y.dtype == np.float32
    assert ds.modality_names == ["tabular"]
    assert ds.tabular_columns("tabular") == (["a"], ["colour"])
    sizes = [len(ds.indices(s)) for s in ("train", "val", "test")]
    assert sizes == [70, 15, 15]
    assert ds.config.split.model_dump() == {"val": 0.15, "test": 0.15, "seed": 0, "group": None}


def test_from_dataframe_partial_modalities_and_problems(tmp_path: Path) -> None:
    df = pd.DataFrame({"label": ["a", "b"] * 10, "img": ["x.png"] * 20, "v": range(20)})
    with pytest.raises(DatasetError) as info:
        Dataset.from_dataframe(
            df, target="label", modalities={"pic": {"column": "img"}}, root=tmp_path
        )
    problems = info.value.problems
    assert len(problems) == 20
    assert problems[0].where == "dataframe row 1, column img"
    assert "file not found: x.png" in problems[0].message
    assert "more file not found problems" not in str(info.value)  # 20 are listed in full


def test_from_dataframe_reports_bad_config() -> None:
    df = pd.DataFrame({"label": ["a", "b"] * 10, "v": range(20)})
    with pytest.raises(DatasetError, match="config, key modalities.t.type"):
        Dataset.from_dataframe(
            df, target="label", modalities={"t": {"type": "video", "column": "v"}}
        )


# -- messages and file checks ----------------------------------------------------------------


def test_problem_lists_are_capped_but_counted() -> None:
    problems = [Problem(f"t.csv row {i}", "file not found: x", "file_not_found") for i in range(50)]
    problems.append(Problem("t.csv row 3", "empty target", "empty_target"))
    lines = format_problems(problems)
    assert len(lines) == 22 and lines[-1] == "... and 30 more file not found problems"
    err = DatasetError(problems, source="somewhere")
    assert len(err.problems) == 51 and str(err).startswith("dataset somewhere has 51 problems:")


def test_wav_with_extra_chunks_and_odd_sizes(tmp_path: Path) -> None:
    fmt = struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16)
    data = b"\x01\x00" * 50
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
    body += b"LIST" + struct.pack("<I", 3) + b"abc\x00"  # odd-sized chunk + pad byte
    body += b"data" + struct.pack("<I", len(data)) + data
    path = tmp_path / "ok.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    assert check_wav(path).error is None
    from scipy.io import wavfile

    assert wavfile.read(path)[1].shape == (50,)
    path.write_bytes(path.read_bytes()[:-10])
    assert "truncated WAV" in (check_wav(path).error or "")


@pytest.mark.parametrize("ext", ["parquet", "jsonl"])
def test_table_formats_load_like_csv(good_copy: Path, ext: str) -> None:
    df = pd.read_csv(good_copy / "samples.csv")  # typed: age float with NaN, empty cells NaN
    table = good_copy / f"samples.{ext}"
    if ext == "parquet":
        df.to_parquet(table)
    else:
        df.to_json(table, orient="records", lines=True)
    config = yaml.safe_load((good_copy / "dataset.yaml").read_text())
    (good_copy / "dataset.yaml").write_text(yaml.safe_dump({**config, "table": table.name}))
    ds, ref = Dataset.load(good_copy), Dataset.load(GOOD)
    assert ds.classes == ref.classes and (ds.y == ref.y).all() and (ds.split == ref.split).all()
    for name in ref.modality_names:
        assert (ds.present(name) == ref.present(name)).all()
    assert ds.texts("review") == ref.texts("review")
    assert ds.file_paths("watch")[1] == good_copy / "ts" / "02.npy"
    pd.testing.assert_frame_equal(ds.tabular_frame("meta"), ref.tabular_frame("meta"))


def test_roles_and_groups_are_checked() -> None:
    df = pd.DataFrame({"label": ["a", "b"] * 10, "v": range(20), "subject": ["p1", None] * 10})
    with pytest.raises(DatasetError) as info:
        Dataset.from_dataframe(
            df,
            target="label",
            modalities={"tab": {"type": "tabular", "columns": ["v", "label"]}},
            split={"val": 0.2, "test": 0.2, "group": "subject"},
        )
    kinds = [p.kind for p in info.value.problems]
    assert kinds.count("bad_column") == 1 and kinds.count("empty_group") == 10
    assert "column 'label' is the target" in str(info.value)
    assert "dataframe row 2, column subject: empty group value" in str(info.value)


def test_error_and_report_survive_serialisation() -> None:
    import pickle

    err = DatasetError([Problem("t.csv row 1", "empty target", "empty_target")], source="x")
    again = pickle.loads(pickle.dumps(err))
    assert again.problems == err.problems and str(again) == str(err)
    report = validate_dataset(Path(__file__).parent / "broken" / "empty_target")
    assert json.loads(json.dumps(report.to_dict()))["problems"][0]["kind"] == "empty_target"


def test_modality_name_clashing_with_module_attributes_is_rejected(tmp_path):
    import shutil

    from autofuse.data import validate_dataset

    good = Path(__file__).parent / "good"
    shutil.copytree(good, tmp_path / "d")
    y = tmp_path / "d" / "dataset.yaml"
    y.write_text(y.read_text().replace("\n  meta:", "\n  type:"))
    report = validate_dataset(tmp_path / "d")
    assert any("modalities" in p.where and "reserved" in p.message for p in report.problems)
