"""The dataset's group column (``group:`` in ``dataset.yaml``) and the cross-validation folds
(:func:`autofuse.data.splits.cv_folds`) that keep each group whole (issue 19)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from autofuse.data import Dataset, DatasetError, validate_dataset
from autofuse.data.splits import cv_folds
from autofuse.errors import ConfigError

GOOD = Path(__file__).parent / "good"
#: ``Dataset.load(GOOD).fingerprint()`` measured before the ``group`` key existed: a dataset
#: without a group hashes as before, so its studies still resume
GOOD_FINGERPRINT = "d76c0f28a30e7efd623376fde781a2b4c8af5ab6c3d13c46954ac0739c2719b5"


def _check_partition(folds: list[np.ndarray], rows: np.ndarray) -> None:
    for f in folds:
        assert len(f) > 0 and f.dtype == np.int64 and (np.diff(f) > 0).all()  # sorted, unique
    joined = np.concatenate(folds)
    assert len(joined) == len(rows) and set(joined.tolist()) == set(rows.tolist())


# -- folds --------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["classification", "regression", "multilabel"])
def test_grouped_folds_never_split_a_group(task: str) -> None:
    """Property check over seeds, k and group sizes: each group lies in exactly one fold."""
    for seed in range(4):
        rng = np.random.default_rng(seed)
        for k in (2, 3, 5):
            for size in (1, 3, 7):
                n_groups = 12
                sizes = rng.integers(1, size + 1, n_groups)  # uneven groups (1 .. size rows)
                groups = np.concatenate([np.repeat(f"g{i}", s) for i, s in enumerate(sizes)])
                groups = groups.astype(object)
                n = len(groups)
                if task == "classification":
                    y = rng.integers(0, 3, n)
                elif task == "regression":
                    y = rng.normal(size=n).astype(np.float32)
                else:
                    y = (rng.random((n, 4)) < 0.4).astype(np.float32)
                rows = np.sort(rng.choice(n, size=n - 3, replace=False))  # a pool, not all
                folds = cv_folds(rows, y, task, k, groups=groups, seed=seed)
                _check_partition(folds, rows)
                assert len(folds) == min(k, len(set(groups[rows])))
                where: dict[str, int] = {}
                for f_idx, fold in enumerate(folds):
                    for g in groups[fold]:
                        assert where.setdefault(g, f_idx) == f_idx, (seed, k, size, g)


@pytest.mark.parametrize("task", ["classification", "regression", "multilabel"])
def test_folds_are_disjoint_cover_the_pool_and_are_deterministic(task: str) -> None:
    rng = np.random.default_rng(0)
    n = 60
    y = {
        "classification": rng.integers(0, 2, n),
        "regression": rng.normal(size=n),
        "multilabel": (rng.random((n, 3)) < 0.5).astype(np.float32),
    }[task]
    rows = np.arange(5, 50)[::-1]  # a pool in any order; y is indexed by row
    folds = cv_folds(rows, y, task, 5, seed=3)
    assert len(folds) == 5
    _check_partition(folds, rows)
    again = cv_folds(rows, y, task, 5, seed=3)
    assert all((a == b).all() for a, b in zip(folds, again, strict=True))
    other = cv_folds(rows, y, task, 5, seed=4)
    assert any((a != b).any() for a, b in zip(folds, other, strict=True) if len(a) == len(b))


def test_stratified_folds_keep_class_proportions() -> None:
    y = np.array([0] * 60 + [1] * 30 + [2] * 10)
    rows = np.arange(100)
    for seed in range(3):
        for k in (2, 5):
            for fold in cv_folds(rows, y, "classification", k, seed=seed):
                share = np.bincount(y[fold], minlength=3) / len(fold)
                assert np.abs(share - [0.6, 0.3, 0.1]).max() <= 0.05, (seed, k, share)


def test_grouped_stratified_folds_stay_roughly_balanced() -> None:
    rng = np.random.default_rng(1)
    groups = np.repeat([f"s{i}" for i in range(20)], 10).astype(object)
    y = rng.integers(0, 2, 200)
    for fold in cv_folds(np.arange(200), y, "classification", 4, groups=groups, seed=0):
        assert abs(y[fold].mean() - y.mean()) < 0.15


def test_fold_edge_cases(caplog: pytest.LogCaptureFixture) -> None:
    y = np.array([0, 1] * 10)
    rows = np.arange(20)
    for k in (1, 0, -3):
        with pytest.raises(ConfigError, match="at least 2 folds"):
            cv_folds(rows, y, "classification", k)
    with pytest.raises(ConfigError, match="at least 2 rows"):
        cv_folds(np.array([3]), y, "classification", 2)
    with pytest.raises(ConfigError, match="at least 2 groups"):
        cv_folds(rows, y, "classification", 3, groups=np.array(["p"] * 20, dtype=object))
    with pytest.raises(ValueError, match="unknown task"):
        cv_folds(rows, y, "ranking", 3)
    with pytest.raises(ValueError, match="more than once"):
        cv_folds(np.array([1, 1, 2, 3]), y, "classification", 2)

    # fewer groups than k: k is reduced to the number of groups, with a warning
    groups = np.array(["a", "b", "c"] * 6 + ["a", "b"], dtype=object)
    with caplog.at_level(logging.WARNING, logger="autofuse.data.splits"):
        folds = cv_folds(rows, y, "regression", 5, groups=groups)
    assert len(folds) == 3 and "3 groups cannot fill 5 folds" in caplog.text
    _check_partition(folds, rows)

    # fewer rows than k, and every class smaller than k: reduced, never an empty fold
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="autofuse.data.splits"):
        folds = cv_folds(np.arange(4), y, "classification", 10)
    assert len(folds) == 2 and "fewer than" in caplog.text
    _check_partition(folds, np.arange(4))
    unique = np.arange(20)  # every row its own class: nothing to stratify, plain folds
    _check_partition(cv_folds(rows, unique, "classification", 5), rows)

    # a class with fewer members than k is allowed (sklearn's warning is logged)
    rare = np.array([0] * 18 + [1] * 2)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="autofuse.data.splits"):
        folds = cv_folds(rows, rare, "classification", 5)
    assert len(folds) == 5 and "least populated class" in caplog.text
    _check_partition(folds, rows)


def test_stratified_grouping_that_cannot_fill_the_folds_falls_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """sklearn's StratifiedGroupKFold leaves a fold empty here (4 groups, 4 folds): the groups
    are then dealt without stratification, so no fold is empty and each group stays whole."""
    groups = np.array(["a", "a", "b", "c", "c", "c", "c", "d", "d"], dtype=object)
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0])
    with caplog.at_level(logging.WARNING, logger="autofuse.data.splits"):
        folds = cv_folds(np.arange(9), y, "classification", 4, groups=groups, seed=0)
    assert "without stratification" in caplog.text
    assert len(folds) == 4
    _check_partition(folds, np.arange(9))
    assert sorted(len(set(groups[f].tolist())) for f in folds) == [1, 1, 1, 1]


# -- the group column ---------------------------------------------------------------------------


def _write(root: Path, config_extra: dict, subjects: list[str | None] | None = None) -> Path:
    """24 rows, 8 subjects of 3 rows, a tabular input and a class target."""
    subjects = subjects if subjects is not None else [f"p{i // 3}" for i in range(24)]
    frame = pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(24)],
            "subject": subjects,
            "v": [float(i % 7) for i in range(24)],
            "label": ["ab"[i % 2] for i in range(24)],
        }
    )
    root.mkdir(parents=True, exist_ok=True)
    frame.to_csv(root / "samples.csv", index=False)
    config = {
        "name": "grouped",
        "table": "samples.csv",
        "id_column": "id",
        "target": {"column": "label"},
        "split": {"val": 0.25, "test": 0.25, "seed": 0},
        "modalities": {"meta": {"type": "tabular", "columns": ["v"]}},
        **config_extra,
    }
    (root / "dataset.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


def test_fingerprint_of_a_dataset_without_group_is_unchanged() -> None:
    ds = Dataset.load(GOOD)
    assert ds.fingerprint() == GOOD_FINGERPRINT
    assert ds.groups() is None and ds.group_column is None and ds.info()["group"] is None
    assert "group" not in ds.config.normalised()


def test_top_level_group_feeds_the_ratio_split_and_the_fingerprint(tmp_path: Path) -> None:
    ds = Dataset.load(_write(tmp_path / "g", {"group": "subject"}))
    groups = ds.groups()
    assert ds.group_column == "subject" and groups is not None
    assert groups.tolist() == [f"p{i // 3}" for i in range(24)]
    for g in set(groups.tolist()):
        assert len(set(ds.split[groups == g].tolist())) == 1  # each subject in one split
    info = ds.info()
    assert info["group"] == "subject" and info["groups"] == 8
    # the same as split.group; different from no group (the group is part of the identity)
    same = Dataset.load(
        _write(
            tmp_path / "s", {"split": {"val": 0.25, "test": 0.25, "seed": 0, "group": "subject"}}
        )
    )
    assert (same.split == ds.split).all() and same.groups().tolist() == groups.tolist()
    plain = Dataset.load(_write(tmp_path / "p", {}))
    assert plain.groups() is None and plain.fingerprint() != ds.fingerprint()
    # folds over the training pool keep subjects whole
    pool = np.flatnonzero(ds.split != "test")
    folds = cv_folds(pool, ds.y, ds.task, 3, groups=groups, seed=0)
    for g in set(groups[pool].tolist()):
        assert sum(g in set(groups[f].tolist()) for f in folds) == 1


def test_group_with_a_split_column(tmp_path: Path) -> None:
    splits = ["train"] * 16 + ["val"] * 4 + ["test"] * 4
    root = _write(tmp_path / "c", {"group": "subject", "split": {"column": "split"}})
    frame = pd.read_csv(root / "samples.csv")
    frame["split"] = splits
    frame.to_csv(root / "samples.csv", index=False)
    ds = Dataset.load(root)
    assert ds.groups() is not None and ds.info()["groups"] == 8
    # subject p5 (rows 16..18) is in train and val: a note, not a problem
    report = validate_dataset(root)
    assert report.ok
    assert any("column subject: 2 group(s)" in n for n in report.summary["notes"])


def test_group_key_is_validated(tmp_path: Path) -> None:
    report = validate_dataset(_write(tmp_path / "m", {"group": "subjct"}))
    assert [str(p) for p in report.problems] == [
        "dataset.yaml, key group: column 'subjct' not found in samples.csv; did you mean 'subject'?"
    ]
    conflict = _write(
        tmp_path / "x",
        {"group": "subject", "split": {"val": 0.25, "test": 0.25, "group": "id"}},
    )
    lines = [str(p) for p in validate_dataset(conflict).problems]
    assert len(lines) == 1
    assert all(w in lines[0] for w in ("dataset.yaml", "key group", "key split.group", "'id'"))
    newline = validate_dataset(_write(tmp_path / "n", {"group": "subject\n"}))
    assert [p.kind for p in newline.problems] == ["config"]
    assert "key group" in str(newline.problems[0]) and "control character" in str(
        newline.problems[0]
    )
    empty = validate_dataset(_write(tmp_path / "e", {"group": "subject"}, ["p1", None] * 12))
    assert [p.kind for p in empty.problems] == ["empty_group"] * 12
    assert str(empty.problems[0]).startswith(
        "samples.csv row 2 (id=r1), column subject: empty group"
    )


def test_from_dataframe_with_group() -> None:
    df = pd.DataFrame(
        {
            "subject": [f"s{i // 4}" for i in range(40)],
            "x": np.arange(40, dtype=float) % 9,
            "label": ["ab"[i % 2] for i in range(40)],
        }
    )
    ds = Dataset.from_dataframe(df, target="label", group="subject")
    assert ds.group_column == "subject" and ds.config.group == "subject"
    assert "subject" not in [c for m in ds.config.modalities.values() for c in m.cols]
    groups = ds.groups()
    assert groups is not None
    for g in set(groups.tolist()):
        assert len(set(ds.split[groups == g].tolist())) == 1
    with pytest.raises(DatasetError, match="key group: column 'patient' not found"):
        Dataset.from_dataframe(df, target="label", group="patient")
    # split.group alone keeps working and is the dataset's group too
    old = Dataset.from_dataframe(
        df, target="label", split={"val": 0.2, "test": 0.2, "group": "subject"}
    )
    assert old.group_column == "subject" and old.groups() is not None
    assert "group" not in old.config.normalised()  # the old spelling hashes as before


def test_prediction_rows_need_no_group(tmp_path: Path) -> None:
    ds = Dataset.load(_write(tmp_path / "g", {"group": "subject"}))
    rows = pd.read_csv(tmp_path / "g" / "samples.csv").drop(columns=["subject", "label"])
    pred = Dataset.for_prediction(rows, ds.config)
    assert pred.groups() is None and len(pred) == 24
