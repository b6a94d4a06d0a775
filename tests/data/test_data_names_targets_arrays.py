"""Issue 18: names with control characters, targets a model cannot learn from, NaN / inf in
``.npy`` arrays, and ``autofuse data validate --json``.

Real datasets written to ``tmp_path`` (six or eight rows, fixed seeds); no mocks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from autofuse.cli import main
from autofuse.data import Dataset, DatasetError, validate_dataset
from autofuse.errors import ConfigError
from autofuse.paths import check_study_name

TESTS = Path(__file__).parent.parent
BROKEN = TESTS / "data" / "broken"
GOOD = TESTS / "data" / "good"
TINY = TESTS / "spaces" / "tiny.yaml"

SPLITS = ["train", "train", "train", "train", "val", "test"]


def _dataset(
    root: Path,
    labels: list[Any],
    task: str = "classification",
    series: list[np.ndarray] | None = None,
    **extra: Any,
) -> Path:
    """Six rows (ids s1..s6, rows 1-4 train, 5 val, 6 test): an ``age`` column, the labels, and
    with ``series`` a timeseries modality of one ``.npy`` per row."""
    root.mkdir(parents=True, exist_ok=True)
    header = "id,age,label,split" + (",watch" if series is not None else "")
    lines = [header]
    for k, label in enumerate(labels, start=1):
        line = f"s{k},{30 + k},{label},{SPLITS[k - 1]}"
        if series is not None:
            (root / "ts").mkdir(exist_ok=True)
            np.save(root / "ts" / f"{k}.npy", series[k - 1])
            line += f",ts/{k}.npy"
        lines.append(line)
    (root / "samples.csv").write_text("\n".join(lines) + "\n")
    modalities: dict[str, Any] = {"meta": {"type": "tabular", "columns": ["age"]}}
    if series is not None:
        modalities["watch"] = {"type": "timeseries", "column": "watch"}
    config = {
        "name": "issue18",
        "table": "samples.csv",
        "id_column": "id",
        "target": {"column": "label", "task": task},
        "split": {"column": "split"},
        "modalities": modalities,
        **extra,
    }
    (root / "dataset.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


def _series(seed: int = 0, steps: int = 12, channels: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((steps, channels)).astype(np.float32) for _ in range(6)]


def _where(report) -> list[tuple[str, str]]:
    return [(p.where, p.kind) for p in report.problems]


# -- names: study, MLflow names, dataset.yaml keys -------------------------------------------------


@pytest.mark.parametrize("name", ["zz\n", "zz\r", "zz\r\n", "z\x00z", "z\tz", "z\x7f", "\nzz"])
def test_a_study_name_with_a_control_character_is_refused(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_study_name(name)
    message = str(info.value)
    assert message.startswith(f"--study {name!r}:") and "\n" not in message


def test_plain_study_names_still_pass() -> None:
    for name in ("s", "race1", "a.b-c_1", "x" * 128):
        assert check_study_name(name) == name
    for name in ("x" * 129, "", "-a", "a/b", "../esc", "a b"):
        with pytest.raises(ConfigError):
            check_study_name(name)


def test_a_registered_model_name_with_a_newline_is_refused(tmp_path: Path) -> None:
    from autofuse.mlflow_model import log_pyfunc

    for key, kwargs in (
        ("registered_name", {"registered_name": "m\n"}),
        ("experiment", {"experiment": "e\r"}),
    ):
        with pytest.raises(ConfigError) as info:
            log_pyfunc(tmp_path / "export", tracking_uri=f"sqlite:///{tmp_path}/m.db", **kwargs)
        assert str(info.value).startswith(f"{key} ") and "control character" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


@pytest.mark.parametrize(
    ("change", "key", "shown"),
    [
        (lambda c: c["target"].update(column="label\n"), "target.column", r"'label\n'"),
        (lambda c: c["split"].update(column="split\r"), "split.column", r"'split\r'"),
        (lambda c: c.update(id_column="id\n"), "id_column", r"'id\n'"),
        (lambda c: c.update(name="issue\x0018"), "name", r"'issue\x0018'"),
        (
            lambda c: c["modalities"]["meta"].update(columns=["age", "dept\n"]),
            "modalities.meta.columns",
            r"'dept\n'",
        ),
        (
            lambda c: c["modalities"].update(meta2=c["modalities"].pop("meta")),
            None,
            None,
        ),
        (
            lambda c: c["modalities"].update({"meta\n": c["modalities"].pop("meta")}),
            "modalities",
            r"['meta\n']",
        ),
        (
            lambda c: c["modalities"].update({"meta\r": c["modalities"].pop("meta")}),
            "modalities",
            r"['meta\r']",
        ),
    ],
    ids=[
        "target",
        "split",
        "id",
        "name",
        "tabular-column",
        "plain-modality-ok",
        "modality-newline",
        "modality-cr",
    ],
)
def test_names_with_control_characters_in_dataset_yaml(tmp_path: Path, change, key, shown) -> None:
    root = _dataset(tmp_path / "d", list("abab") + ["a", "b"])
    config = yaml.safe_load((root / "dataset.yaml").read_text())
    change(config)
    (root / "dataset.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    report = validate_dataset(root)
    if key is None:
        assert report.ok, report.lines()
        return
    (problem,) = report.problems
    assert problem.where == f"dataset.yaml, key {key}" and problem.kind == "config"
    assert shown in problem.message, problem.message
    line = str(problem)
    assert "\n" not in line and "\r" not in line and "\x00" not in line


def test_the_broken_name_cases_fail_in_one_line() -> None:
    for case in ("newline_in_modality_name", "newline_in_column_name"):
        with pytest.raises(DatasetError) as info:
            Dataset.load(BROKEN / case)
        assert len(str(info.value).splitlines()) == 2  # the header and the one problem


# -- targets -----------------------------------------------------------------------------------


def test_one_class_on_train_is_refused_naming_the_column_and_the_class(tmp_path: Path) -> None:
    # the whole table has one class
    report = validate_dataset(_dataset(tmp_path / "a", ["a"] * 6))
    assert _where(report) == [("samples.csv, column label", "single_class")]
    assert "every training row has the class 'a'" in report.problems[0].message
    # one class on train, another only in test: both are said
    report = validate_dataset(_dataset(tmp_path / "b", ["a"] * 5 + ["b"]))
    kinds = sorted(p.kind for p in report.problems)
    assert kinds == ["class_without_train", "single_class"]
    # two classes on train: fine, even when val holds only one of them
    assert validate_dataset(_dataset(tmp_path / "c", ["a", "b", "a", "a", "a", "b"])).ok


def test_a_multilabel_target_with_the_same_labels_in_every_training_row(tmp_path: Path) -> None:
    same = ["x|y", "y|x", "x|y", "x|y", "x", "y"]
    report = validate_dataset(_dataset(tmp_path / "a", same, task="multilabel"))
    assert _where(report) == [("samples.csv, column label", "single_class")]
    assert "'x|y'" in report.problems[0].message
    # one label present everywhere, another that varies: learnable
    varied = ["x|y", "x", "x|y", "x", "x|y", "x"]
    assert validate_dataset(_dataset(tmp_path / "b", varied, task="multilabel")).ok


def test_a_constant_regression_target_on_train_is_refused(tmp_path: Path) -> None:
    report = validate_dataset(_dataset(tmp_path / "a", [2.5] * 4 + [1.0, 3.0], task="regression"))
    assert _where(report) == [("samples.csv, column label", "constant_target")]
    assert "all 4 training rows have 2.5" in report.problems[0].message
    # the same number written differently is still the same number
    report = validate_dataset(
        _dataset(tmp_path / "b", ["1", "1.0", "1e0", "1", "2", "3"], task="regression")
    )
    assert [p.kind for p in report.problems] == ["constant_target"]
    # constant on val/test only is fine
    varied = [1.0, 2.0, 3.0, 4.0, 5.0, 5.0]
    assert validate_dataset(_dataset(tmp_path / "c", varied, task="regression")).ok


def test_a_dataframe_with_one_class_is_refused_too() -> None:
    import pandas as pd

    df = pd.DataFrame(
        {"x": np.arange(8.0), "label": ["a"] * 8, "split": ["train"] * 6 + ["val", "test"]}
    )
    with pytest.raises(DatasetError) as info:
        Dataset.from_dataframe(df, target="label")
    assert "dataframe, column label: every training row has the class 'a'" in str(info.value)


def test_predicting_on_rows_of_one_class_is_allowed() -> None:
    ds = Dataset.for_prediction(BROKEN / "single_class_target", None)
    assert len(ds) == 6
    ds = Dataset.for_prediction(BROKEN / "constant_regression_target", None)
    assert len(ds) == 6


@pytest.mark.parametrize("case", ["class_without_train", "single_class_target"])
def test_the_search_refuses_a_target_it_cannot_learn(case: str, tmp_path: Path) -> None:
    """A class seen in val/test but never in train: the labels are encoded from every row, so the
    model would have an output that no training row teaches; the search refuses the dataset up
    front (with the validation line that says so) and writes nothing."""
    from autofuse.study import search

    with pytest.raises(DatasetError) as info:
        search(
            BROKEN / case,
            study="s",
            space=TINY,
            trials=1,
            workdir=tmp_path / "w",
            progress=False,
            mlflow_uri="off",
            report=False,
        )
    text = str(info.value)
    assert "samples.csv, column label" in text
    if case == "class_without_train":
        assert "no model could learn to predict it, so the search refuses the dataset" in text
    assert not (tmp_path / "w" / "trials").exists()


# -- NaN / inf in .npy timeseries ------------------------------------------------------------------


def test_non_finite_values_in_npy_are_problems_naming_row_column_and_file(tmp_path: Path) -> None:
    series = _series()
    series[1][3, 1] = np.nan
    series[2][0, 0] = np.inf
    series[2][5, 1] = -np.inf
    big = series[3].astype(np.float64)
    big[7, 0] = 1e300  # finite in float64, inf once read as float32
    series[3] = big
    root = _dataset(tmp_path / "d", list("abab") + ["a", "b"], series=series)
    report = validate_dataset(root)
    by_where = {p.where: p for p in report.problems}
    assert set(by_where) == {f"samples.csv row {k} (id=s{k}), column watch" for k in (2, 3, 4)}, (
        report.lines()
    )
    assert all(p.kind == "non_finite" for p in report.problems)
    msg = {k: by_where[f"samples.csv row {k} (id=s{k}), column watch"].message for k in (2, 3, 4)}
    assert msg[2].startswith("ts/2.npy: 1 non-finite value (first: nan at [3, 1])")
    assert msg[3].startswith("ts/3.npy: 2 non-finite values (first: inf at [0, 0])")
    assert "1e+300 (too large for float32) at [7, 0]" in msg[4]
    assert all("set 'non_finite: missing' in dataset.yaml" in m for m in msg.values())
    with pytest.raises(DatasetError) as info:
        Dataset.load(root)
    assert len(str(info.value).splitlines()) == 4  # header + one line per file


def test_integer_and_finite_npy_files_pass(tmp_path: Path) -> None:
    series: list[np.ndarray] = [s.astype(np.int16) for s in _series()]
    root = _dataset(tmp_path / "d", list("abab") + ["a", "b"], series=series)
    report = validate_dataset(root)
    assert report.ok and "notes" not in report.summary
    # the good dataset (image, audio, text, tabular, timeseries) is unaffected: no note, no fault
    report = validate_dataset(GOOD)
    assert report.ok and "notes" not in report.summary
    assert Dataset.load(GOOD)._checked.cell_faults == []


def test_missing_policy_imputes_npy_values_and_training_sees_only_finite_ones(
    tmp_path: Path,
) -> None:
    from autofuse.encoders import EncoderSpec, prepare_modality

    series = _series(seed=3)
    series[0][2, 0] = np.nan  # train
    series[1][:, 1] = np.inf  # train: a whole channel
    series[4][4, 0] = -np.inf  # val
    root = _dataset(tmp_path / "d", list("abab") + ["a", "b"], series=series, non_finite="missing")
    report = validate_dataset(root)
    assert report.ok, report.lines()
    (note,) = report.summary["notes"]
    assert "column watch: 3 .npy file(s) with non-finite values" in note and "rows 1, 2, 5" in note
    ds = Dataset.load(root)
    assert ds.present("watch").all()  # the modality is still there: only the values are missing
    # resampled (the default): finite everywhere
    spec = EncoderSpec(name="timeseries.cnn1d", mode="scratch")
    prepared = prepare_modality(ds, "watch", spec)
    assert np.isfinite(prepared.inputs.numpy()).all()
    assert np.isfinite(prepared.state["mean"]).all() and np.isfinite(prepared.state["std"]).all()
    # at the files' own length: statistics over the finite training values only, and every
    # missing value imputed with its channel's mean (0 once standardised)
    exact = EncoderSpec(
        name="timeseries.cnn1d", mode="scratch", params={"length": 12, "resample": False}
    )
    prepared = prepare_modality(ds, "watch", exact)
    x = prepared.inputs.numpy()
    assert x.shape == (6, 12, 2) and np.isfinite(x).all()
    train = np.concatenate([series[i] for i in range(4)]).astype(np.float64)
    finite = [train[np.isfinite(train[:, c]), c] for c in range(2)]
    assert prepared.state["mean"] == pytest.approx([f.mean() for f in finite], rel=1e-5)
    assert prepared.state["std"] == pytest.approx([f.std() for f in finite], rel=1e-5)
    assert x[0, 2, 0] == 0.0 and (x[1, :, 1] == 0.0).all() and x[4, 4, 0] == 0.0
    expected = (series[0][3, 0] - finite[0].mean()) / finite[0].std()
    assert x[0, 3, 0] == pytest.approx(expected, rel=1e-5)
    # prediction reads the same values the same way (and lists the files it imputed)
    pred = Dataset.for_prediction(root, ds.config, bad_files="missing")
    assert len(pred.skipped_numbers) == 3 and "ts/2.npy" in pred.skipped_numbers[1]
    again = prepare_modality(pred, "watch", exact, state=prepared.state)
    assert np.isfinite(again.inputs.numpy()).all()


def test_the_preprocessing_never_passes_a_non_finite_value(tmp_path: Path) -> None:
    """Even a file changed behind the dataset's back after validation."""
    from autofuse.encoders import EncoderSpec, prepare_modality

    series = _series(seed=5)
    root = _dataset(tmp_path / "d", list("abab") + ["a", "b"], series=series)
    ds = Dataset.load(root)
    bad = series[0].astype(np.float64)
    bad[0, 0], bad[1, 1] = np.nan, 1e300
    np.save(root / "ts" / "1.npy", bad)
    prepared = prepare_modality(ds, "watch", EncoderSpec(name="timeseries.cnn1d", mode="scratch"))
    assert np.isfinite(prepared.inputs.numpy()).all()
    assert np.isfinite(prepared.state["mean"]).all() and np.isfinite(prepared.state["std"]).all()


# -- data validate --json ----------------------------------------------------------------------


def test_json_lists_the_same_problems_as_the_text(tmp_path: Path) -> None:
    root = tmp_path / "three"
    shutil.copytree(BROKEN / "three_problems", root)
    series = _series()
    series[2][1, 1] = np.nan
    (root / "ts").mkdir()
    for k, s in enumerate(series, start=1):
        np.save(root / "ts" / f"{k}.npy", s)
    import pandas as pd

    frame = pd.read_csv(root / "samples.csv", dtype=str, keep_default_na=False)
    frame["watch"] = [f"ts/{k}.npy" for k in range(1, 7)]
    frame.to_csv(root / "samples.csv", index=False)
    config = yaml.safe_load((root / "dataset.yaml").read_text())
    config["modalities"]["watch"] = {"type": "timeseries", "column": "watch"}
    (root / "dataset.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    # four problems: a missing file, a duplicate id, an empty target, NaN in an .npy

    text = CliRunner().invoke(main, ["data", "validate", str(root)])
    js = CliRunner().invoke(main, ["data", "validate", str(root), "--json"])
    assert text.exit_code == js.exit_code == 1
    printed = [
        ln.removeprefix("problem: ")
        for ln in text.stdout.splitlines()
        if ln.startswith("problem: ")
    ]
    doc = json.loads(js.stdout)
    assert doc["ok"] is False and doc["summary"] is None
    assert [p["text"] for p in doc["problems"]] == printed
    assert len(printed) == 4
    assert doc["counts"] == {
        "file_not_found": 1,
        "duplicate_id": 1,
        "empty_target": 1,
        "non_finite": 1,
    }
    for p in doc["problems"]:
        assert p["file"] == "samples.csv" and isinstance(p["row"], int) and p["column"]
        assert p["text"] == f"{p['where']}: {p['message']}"
    nan = next(p for p in doc["problems"] if p["kind"] == "non_finite")
    assert (nan["row"], nan["id"], nan["column"]) == (3, "s3", "watch")
    assert js.stderr.strip() == text.stderr.strip()  # the one error line, on stderr
