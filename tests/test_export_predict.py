"""Export a trial, predict with it in a fresh process, retrain it, serve it through MLflow pyfunc."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml
from ci import IN_CI
from click.testing import CliRunner
from PIL import Image

import autofuse
from autofuse.cli import main
from autofuse.data import DatasetError
from autofuse.errors import ConfigError
from autofuse.export import export_trial
from autofuse.predict import PredictionError
from autofuse.study import search

REPO = Path(__file__).resolve().parents[1]

# tiny and CPU-fast, with a frozen encoder so that the float16 feature-cache path is exercised
SPACE = """\
name: export_test
trials: 2
fusion:
  encoder_decoder:
    early: {params: {hidden: [32], depth: {low: 1, high: 1}}}
    decision: {params: {hidden: [32]}}
encoders:
  image:
    - {name: image.timm, modes: [frozen], params: {model_name: [test_resnet], image_size: [32]}}
  text:
    - {name: text.small, modes: [scratch], params: {dim: [16], arch: [conv], depth: {low: 1, high: 1}}}
  tabular:
    - {name: tabular.mlp, modes: [scratch], params: {dim: [16], hidden: [32]}}
training:
  lr: {low: 0.01, high: 0.02, log: true}
  batch_size: [32]
  epochs: 3
  patience: 3
  fused_dim: [32]
sampler: {name: tpe, n_startup_trials: 2}
pruner: {name: none}
stages: {enabled: false}
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory, demo_dataset):
    work = tmp_path_factory.mktemp("export_work")
    space = work / "space.yaml"
    space.write_text(SPACE)
    res = search(
        demo_dataset,
        study="ex",
        trials=2,
        space=str(space),
        workdir=work,
        progress=False,
        mlflow_uri="off",
        device="cpu",
    )  # CPU throughout: bit-for-bit comparisons
    return work, res


@pytest.fixture(scope="module")
def exported(study, tmp_path_factory):
    work, res = study
    out = tmp_path_factory.mktemp("exports") / "best"
    r = export_trial("ex", out, workdir=work)
    assert r.trial == res.summary["best_trial"]
    return out


def _fresh(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )


def _reference_outputs(work: Path, dataset: Path, number: int) -> np.ndarray:
    """Outputs of a trial's checkpoint evaluated exactly as the search evaluates (frozen features
    from the feature cache), for every row."""
    from safetensors.torch import load_file

    from autofuse.data import Dataset
    from autofuse.model import build_model
    from autofuse.paths import Paths
    from autofuse.runner import CandidateRunner
    from autofuse.spec import load_architecture
    from autofuse.train import predict_outputs

    ck = work / "trials" / "ex" / "checkpoints"
    spec, info = load_architecture(ck / f"trial_{number}.json")
    ds = Dataset.load(dataset)
    runner = CandidateRunner(ds, Paths.resolve(work).cache, torch.device("cpu"))
    data, _ = runner.prepare(spec)
    model = build_model(spec, info, skip_frozen=True)
    model.load_state_dict(load_file(str(ck / f"trial_{number}.safetensors")))
    return predict_outputs(model, data, np.arange(len(ds)), torch.device("cpu"))


def _check_export_folder(out: Path) -> dict:
    doc = json.loads((out / "architecture.json").read_text())
    info, meta = doc["dataset_info"], doc["export"]
    assert info["classes"] == ["0", "1", "2", "3"] and info["task"] == "classification"
    assert info["config"]["modalities"]["image"]["column"] == "image_path"
    assert info["modalities"]["text"]["state"]["vocab"]  # vocabulary
    tab = info["modalities"]["tabular"]["state"]
    assert (
        tab["mean"] and tab["std"] and tab["categorical"]["region"]
    )  # standardisation, categories
    assert set(meta["encoders"]) == {"image", "text", "tabular"}
    assert meta["encoders"]["image"]["initialised_from"].startswith("random initialisation")
    card = (out / "model_card.md").read_text()
    for needle in (
        "## Dataset",
        "## Metrics",
        "family **encoder_decoder**",
        "parameters:",
        "latency:",
    ):
        assert needle in card
    return doc


# ----------------------------------------------------------------------------------- round trip
def test_round_trip_in_a_fresh_process_gives_the_recorded_test_metric(
    study, exported, demo_dataset, tmp_path
):
    work, res = study
    doc = _check_export_folder(exported)
    assert doc["spec"]["encoders"]["image"]["mode"] == "frozen"  # float16 cache path exercised
    best = res.summary["best_trial"]
    out = tmp_path / "pred.csv"
    r = _fresh(
        [
            "-m",
            "autofuse.cli",
            "predict",
            str(exported),
            str(demo_dataset),
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    pred = pd.read_csv(out, dtype={"id": str, "prediction": str})
    rows = pd.read_csv(demo_dataset / "samples.csv", dtype=str)
    assert list(pred["id"]) == list(rows["id"])  # every row, input order, id first
    assert list(pred.columns) == ["id", "prediction", "proba_0", "proba_1", "proba_2", "proba_3"]
    test = (rows["split"] == "test").to_numpy()
    classes = ["0", "1", "2", "3"]
    y = np.array([classes.index(v) for v in rows["label"][test]])
    p = np.array([classes.index(v) for v in pred["prediction"][test]])
    from sklearn.metrics import f1_score

    got = {
        "accuracy": float((p == y).mean()),
        "macro_f1": float(f1_score(y, p, average="macro", zero_division=0)),
    }
    assert got == res.summary["test_metrics"]  # summary.json
    url = f"sqlite:///{work / 'trials' / 'autofuse.db'}"
    trial = optuna.load_study(study_name="ex", storage=url).trials[best]
    assert got == trial.user_attrs["test_metrics"]  # the trial record
    # bit for bit: the probabilities are those of the search's own evaluation
    ref = torch.softmax(torch.from_numpy(_reference_outputs(work, demo_dataset, best)), 1).numpy()
    assert np.array_equal(pred[[f"proba_{c}" for c in classes]].to_numpy(), ref.astype(np.float64))


# ----------------------------------------------------------------------------------- bad input
def _new_data(demo: Path, dest: Path, n: int = 24) -> pd.DataFrame:
    """The first n rows of the demo as a new folder: no target, no split, no dataset.yaml."""
    rows = pd.read_csv(demo / "samples.csv", dtype=str).head(n)
    (dest / "images").mkdir(parents=True)
    for rel in rows["image_path"].dropna():
        shutil.copy(demo / rel, dest / rel)
    return rows.drop(columns=["label", "split"])


def test_predict_without_target_and_with_missing_modalities(
    exported, demo_dataset, tmp_path, caplog
):
    folder = tmp_path / "new"
    rows = _new_data(demo_dataset, folder)
    rows.loc[0:3, "image_path"] = None  # no image
    rows.loc[4:7, "text"] = None  # no text
    rows.loc[8:11, ["reading", "temperature", "age", "region"]] = None  # no tabular at all
    rows.loc[12, ["image_path", "text"]] = None  # tabular only
    rows.loc[13, "region"] = "atlantis"  # a category never seen in training
    with Image.open(folder / rows.loc[14, "image_path"]) as im:  # another size and mode
        im.convert("L").resize((50, 20)).save(folder / rows.loc[14, "image_path"])
    rows.to_csv(folder / "samples.csv", index=False)
    r = CliRunner().invoke(
        main,
        [
            "predict",
            str(exported),
            str(folder),
            "--out",
            str(tmp_path / "p.csv"),
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "1 row(s) with categories unseen in training ('atlantis')" in caplog.text
    pred = pd.read_csv(tmp_path / "p.csv", dtype={"id": str})
    assert list(pred["id"]) == list(rows["id"]) and len(pred) == 24
    assert pred["prediction"].notna().all()
    assert np.allclose(pred.filter(like="proba_").sum(axis=1), 1.0, atol=1e-5)
    # the same from Python, on a DataFrame with absolute paths
    model = autofuse.load(exported, device="cpu")
    df = rows.assign(
        image_path=[None if p is None or p != p else str(folder / p) for p in rows["image_path"]]
    )
    again = model.predict(df)
    assert np.array_equal(
        again.filter(like="proba_").to_numpy(), pred.filter(like="proba_").to_numpy()
    )


def test_bad_input_gives_clear_errors_and_writes_nothing(exported, demo_dataset, tmp_path, caplog):
    folder = tmp_path / "new"
    rows = _new_data(demo_dataset, folder)
    out = tmp_path / "p.csv"
    runner = CliRunner()
    # a column the model needs is absent
    rows.drop(columns=["text"]).to_csv(folder / "samples.csv", index=False)
    r = runner.invoke(main, ["predict", str(exported), str(folder), "--out", str(out)])
    assert r.exit_code != 0 and isinstance(r.exception, SystemExit)
    assert "modality 'text'" in r.output and "column 'text'" in r.output
    assert "Traceback" not in r.output and not out.exists()
    # an unreadable image: every bad row named, nothing written
    rows.to_csv(folder / "samples.csv", index=False)
    bad = [rows.loc[2, "image_path"], rows.loc[5, "image_path"]]
    for rel in bad:
        (folder / rel).write_bytes(b"not a png")
    r = runner.invoke(main, ["predict", str(exported), str(folder), "--out", str(out)])
    assert r.exit_code != 0 and "Traceback" not in r.output and not out.exists()
    assert "row 3" in r.output and "row 6" in r.output and bad[0] in r.output
    # ... or predicted with the image marked missing, the rows reported
    r = runner.invoke(
        main, ["predict", str(exported), str(folder), "--out", str(out), "--on-bad-file", "missing"]
    )
    assert r.exit_code == 0, r.output
    assert "2 unreadable file(s) treated as missing" in caplog.text and "row 3" in caplog.text
    assert len(pd.read_csv(out)) == len(rows)
    # an export folder that is not one, a study without that trial
    r = runner.invoke(main, ["predict", str(tmp_path), str(folder)])
    assert r.exit_code != 0 and "not an autofuse export" in r.output


def _refuse_constant(name: str) -> None:
    raise AssertionError(f"bare {name} in JSON")


def _strict_json(path: Path) -> dict:
    """``path`` parsed by a strict JSON reader (a bare NaN / Infinity fails the test)."""
    return json.loads(path.read_text(), parse_constant=_refuse_constant)


def test_bad_numbers_are_named_or_marked_missing_never_predicted_blank(
    exported, demo_dataset, tmp_path
):
    folder = tmp_path / "new"
    rows = _new_data(demo_dataset, folder)
    out = tmp_path / "p.csv"
    runner = CliRunner()
    rows.loc[2, "age"] = "inf"
    rows.loc[5, "reading"] = "1e400"
    rows.loc[7, "temperature"] = "3,5"  # a typo: numeric in training, so reported, not re-typed
    rows.to_csv(folder / "samples.csv", index=False)
    args = ["predict", str(exported), str(folder), "--out", str(out), "--device", "cpu"]
    r = runner.invoke(main, args)
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
    assert "Traceback" not in r.output and not out.exists()
    for needle in (
        f"row 3 (id={rows.loc[2, 'id']}), column age: 'inf' is not a finite number",
        f"row 6 (id={rows.loc[5, 'id']}), column reading: '1e400'",
        f"row 8 (id={rows.loc[7, 'id']}), column temperature: '3,5' is not a number",
    ):
        assert needle in r.output, r.output
    # --on-bad-file missing: every row predicted, with probabilities, the bad ones marked
    r = runner.invoke(main, [*args, "--on-bad-file", "missing"])
    assert r.exit_code == 0, r.output
    pred = pd.read_csv(out, dtype={"id": str, "prediction": str}, keep_default_na=False)
    assert list(pred["id"]) == list(rows["id"]) and pred.columns[-1] == "status"
    proba = pred.filter(like="proba_").astype(float)
    assert np.isfinite(proba.to_numpy()).all() and np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert (pred["prediction"] != "").all()
    assert pred.loc[2, "status"] == "missing: tabular.age (not finite)"
    assert pred.loc[5, "status"] == "missing: tabular.reading (not finite)"
    assert pred.loc[7, "status"] == "missing: tabular.temperature (not a number)"
    assert set(pred["status"].drop([2, 5, 7])) == {"ok"}
    # the same cells left empty give the same probabilities: they were predicted as missing
    blank = rows.copy()
    blank.loc[2, "age"] = blank.loc[5, "reading"] = blank.loc[7, "temperature"] = None
    model = autofuse.load(exported, device="cpu")
    ref = model.predict(blank.assign(image_path=[None] * len(blank)), root=folder)
    got = model.predict(
        rows.assign(image_path=[None] * len(rows)), root=folder, bad_files="missing"
    )
    assert np.array_equal(
        got.filter(like="proba_").to_numpy(), ref.filter(like="proba_").to_numpy()
    )
    assert len(model.skipped) == 3 and "row 3, column age: 'inf' (not finite)" in model.skipped[0]


def test_a_row_the_model_cannot_predict_is_an_error_or_marked_failed(
    exported, demo_dataset, tmp_path
):
    # a finite number so large that the standardised input overflows float32: the output is not
    # finite, and such a row must never come out as class 0 with blank probabilities
    folder = tmp_path / "new"
    rows = _new_data(demo_dataset, folder)
    rows.loc[4, "reading"] = "1e300"
    model = autofuse.load(exported, device="cpu")
    data = rows.assign(image_path=[None] * len(rows))
    with pytest.raises(PredictionError, match=r"not finite for 1 row\(s\): dataframe row 5 \(id="):
        model.predict(data)
    pred = model.predict(data, bad_files="missing")
    assert pred.loc[4, "status"].startswith("failed: the model's output is not finite")
    assert pred.loc[4, "prediction"] is None and pred.filter(like="proba_").loc[4].isna().all()
    others = pred.drop(index=4)
    assert (others["status"] == "ok").all() and others.filter(like="proba_").notna().all().all()


def test_a_corrupt_export_is_one_line_naming_the_file(exported, demo_dataset, tmp_path):
    runner = CliRunner()
    for name, damage in (
        ("model.safetensors", b"\x00garbage, not safetensors"),
        ("architecture.json", b"\x89PNG\r\n\x1a\n binary"),
    ):
        broken = tmp_path / name.replace(".", "_")
        shutil.copytree(exported, broken)
        (broken / name).write_bytes(damage)
        out = tmp_path / "p.csv"
        r = runner.invoke(main, ["predict", str(broken), str(demo_dataset), "--out", str(out)])
        assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
        assert "Traceback" not in r.output and not out.exists()
        (line,) = r.output.strip().splitlines()
        assert line.startswith("error: ") and str(broken / name) in line, line
    # a truncated weight file
    broken = tmp_path / "truncated"
    shutil.copytree(exported, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match="model.safetensors: unreadable"):
        autofuse.load(broken, device="cpu")


def test_json_writers_never_write_bare_nan(exported, tmp_path):
    from autofuse.spec import load_architecture, save_architecture
    from autofuse.summary import write_json

    spec, info = load_architecture(exported / "architecture.json")
    info = {**info, "note": [float("nan"), np.float32("inf"), -np.inf]}
    save_architecture(tmp_path / "a.json", spec, info)
    assert _strict_json(tmp_path / "a.json")["dataset_info"]["note"] == [None, None, None]
    write_json(tmp_path / "s.json", {"best_value": float("nan"), "m": {"x": np.float64("inf")}})
    assert _strict_json(tmp_path / "s.json") == {"best_value": None, "m": {"x": None}}


def test_non_finite_missing_policy_trains_and_writes_strict_json(demo_dataset, tmp_path):
    data = tmp_path / "nf"
    shutil.copytree(demo_dataset, data)
    rows = pd.read_csv(data / "samples.csv", dtype=str, keep_default_na=False)
    train = rows.index[rows["split"] == "train"]
    rows.loc[train[0], "age"] = "inf"
    rows.loc[train[1], "reading"] = "1e400"
    rows.loc[train[2], "temperature"] = "NaN"
    rows.to_csv(data / "samples.csv", index=False)
    with pytest.raises(DatasetError, match="is not a finite number"):
        search(
            data,
            study="nf",
            trials=1,
            workdir=tmp_path / "refused",
            progress=False,
            mlflow_uri="off",
            device="cpu",
        )
    assert not (tmp_path / "refused").exists()
    cfg = yaml.safe_load((data / "dataset.yaml").read_text())
    (data / "dataset.yaml").write_text(yaml.safe_dump({**cfg, "non_finite": "missing"}))
    res = search(
        data,
        study="nf",
        trials=1,
        space=str(REPO / "tests" / "spaces" / "tiny.yaml"),
        workdir=tmp_path / "work",
        progress=False,
        mlflow_uri="off",
        device="cpu",
    )
    summary = _strict_json(res.study_dir / "summary.json")
    assert summary["trials"]["completed"] == 1, summary
    doc = _strict_json(res.best_dir / "architecture.json")
    state = doc["dataset_info"]["modalities"]["tabular"]["state"]
    assert all(np.isfinite(state["mean"])) and all(np.isfinite(state["std"]))
    assert {"age", "reading", "temperature"} <= set(state["indicators"])
    for path in res.study_dir.rglob("*.json"):
        _strict_json(path)
    for path in (res.summary.get("report") or {}).values():
        if str(path).endswith(".json"):
            _strict_json(Path(path))
    # the model predicts the same bad cells as missing, as in training, every row with probabilities
    pred = autofuse.load(res.best_dir, device="cpu").predict(data)
    assert np.isfinite(pred.filter(like="proba_").to_numpy()).all() and len(pred) == len(rows)


def test_export_errors(study, tmp_path):
    work, _ = study
    runner = CliRunner()
    r = runner.invoke(
        main, ["export", "--study", "nope", "--out", str(tmp_path / "x"), "--workdir", str(work)]
    )
    assert r.exit_code != 0 and "no study 'nope'" in r.output and "ex" in r.output
    r = runner.invoke(
        main,
        [
            "export",
            "--study",
            "ex",
            "--trial",
            "99",
            "--out",
            str(tmp_path / "x"),
            "--workdir",
            str(work),
        ],
    )
    assert r.exit_code != 0 and "no trial 99" in r.output
    r = runner.invoke(
        main,
        [
            "export",
            "--study",
            "ex",
            "--finetune-encoders",
            "--out",
            str(tmp_path / "x"),
            "--workdir",
            str(work),
        ],
    )
    assert r.exit_code != 0 and "--retrain" in r.output
    # a trial whose checkpoint was not kept (only the best few are)
    other = tmp_path / "work"
    shutil.copytree(work / "trials", other / "trials", ignore=shutil.ignore_patterns("cache"))
    (other / "trials" / "ex" / "checkpoints" / "trial_1.safetensors").unlink()
    r = runner.invoke(
        main,
        [
            "export",
            "--study",
            "ex",
            "--trial",
            "1",
            "--out",
            str(tmp_path / "x"),
            "--workdir",
            str(other),
        ],
    )
    assert r.exit_code != 0 and "no checkpoint" in r.output and "--retrain" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------------- retrain
def test_retrain_refits_on_train_and_val(study, demo_dataset, tmp_path):
    work, res = study
    best = res.summary["best_trial"]
    trial = optuna.load_study(
        study_name="ex", storage=f"sqlite:///{work / 'trials' / 'autofuse.db'}"
    ).trials[best]
    out = tmp_path / "retrained"
    r = export_trial("ex", out, workdir=work, retrain=True, device="cpu")
    assert r.retrained and set(r.metrics["test"]) == {"accuracy", "macro_f1"}
    doc = _check_export_folder(out)
    meta = doc["export"]
    assert meta["retrain"]["epochs"] == trial.user_attrs["best_epoch"]
    assert meta["retrain"]["rows"] == 168 + 36  # train + val of the demo
    assert "retrained on train + val" in (out / "model_card.md").read_text()
    assert len(autofuse.load(out, device="cpu").predict(demo_dataset)) == 240
    # with fine-tuning: the frozen image encoder is trained too (CLI; trial without checkpoint works)
    out2 = tmp_path / "finetuned"
    r = CliRunner().invoke(
        main,
        [
            "export",
            "--study",
            "ex",
            "--trial",
            str(best),
            "--out",
            str(out2),
            "--workdir",
            str(work),
            "--retrain",
            "--finetune-encoders",
            "--dataset",
            str(demo_dataset),
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 0, r.output
    doc = json.loads((out2 / "architecture.json").read_text())
    assert doc["spec"]["encoders"]["image"]["mode"] == "finetune"
    assert doc["export"]["retrain"]["finetuned_encoders"] == ["image"]
    autofuse.load(out2, device="cpu")  # the weights match the fine-tuned architecture


def test_retrain_needs_the_dataset(study, tmp_path):
    work, _ = study
    with pytest.raises(ConfigError, match="--dataset"):
        export_trial("ex", tmp_path / "x", workdir=work, retrain=True, dataset=tmp_path / "gone")


# ----------------------------------------------------------------------------------- MLflow pyfunc
@pytest.fixture(scope="module")
def registry(exported, tmp_path_factory):
    """The export logged as a pyfunc model and registered as ``ex`` (version 1) in a real local
    ``mlflow server`` process; a SQLite store when no server can start (a failure under CI)."""
    from autofuse.mlflow_model import log_pyfunc
    from autofuse.testing.mlflow_server import start_mlflow_server, stop_mlflow_server

    tmp = tmp_path_factory.mktemp("mlflow")
    proc = None
    try:
        uri, proc = start_mlflow_server(tmp / "server", timeout=60)
    except Exception as e:  # noqa: BLE001 - no server binary / port: fall back to a SQLite store
        if IN_CI:
            pytest.fail(f"cannot start mlflow server: {e}")
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
    try:
        assert (
            log_pyfunc(exported, registered_name="ex", tracking_uri=uri, device="cpu")
            == "models:/ex/1"
        )
        yield uri
    finally:
        if proc is not None:
            stop_mlflow_server(proc)


@pytest.fixture(scope="module")
def expected(exported, demo_dataset) -> pd.DataFrame:
    return autofuse.load(exported, device="cpu").predict(demo_dataset)


def test_pyfunc_from_the_registry_predicts_a_dataframe_without_search_code(
    registry, expected, demo_dataset, tmp_path
):
    script = textwrap.dedent(f"""
        import json, sys
        import mlflow, pandas as pd
        mlflow.set_tracking_uri({registry!r})
        model = mlflow.pyfunc.load_model("models:/ex/1")
        df = pd.read_csv({str(demo_dataset / "samples.csv")!r}).drop(columns=["label", "split"])
        df["image_path"] = [None if p != p else {str(demo_dataset)!r} + "/" + p for p in df["image_path"]]
        out = model.predict(df)  # absolute paths
        rel = model.predict(df.head(20).assign(image_path=pd.read_csv(
            {str(demo_dataset / "samples.csv")!r})["image_path"].head(20)),
            params={{"root": {str(demo_dataset)!r}}})  # relative paths and a root
        search = sorted(m for m in sys.modules if m.split(".")[0] == "optuna"
                        or m in ("autofuse.study", "autofuse.space", "autofuse.export"))
        print(json.dumps({{"search": search, "pred": out.to_dict(orient="list"),
                          "rel": rel.to_dict(orient="list")}}))
    """)
    r = _fresh(["-c", script], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["search"] == []  # no Optuna, no search code
    assert got["pred"]["id"] == list(expected["id"])
    assert got["pred"]["prediction"] == list(expected["prediction"])
    for c in ("proba_0", "proba_1", "proba_2", "proba_3"):
        assert np.array_equal(np.array(got["pred"][c]), expected[c].to_numpy())
        assert np.array_equal(np.array(got["rel"][c]), expected[c].to_numpy()[:20])


def test_cli_predicts_from_a_registry_uri(registry, expected, demo_dataset, tmp_path):
    out = tmp_path / "p.csv"
    r = CliRunner().invoke(
        main,
        [
            "predict",
            "models:/ex/1",
            str(demo_dataset),
            "--out",
            str(out),
            "--mlflow-uri",
            registry,
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 0, r.output
    pred = pd.read_csv(out, dtype={"id": str, "prediction": str})
    assert pred["id"].tolist() == list(expected["id"])
    assert np.array_equal(pred["proba_2"].to_numpy(), expected["proba_2"].to_numpy())
    r = CliRunner().invoke(
        main, ["predict", "models:/nope/1", str(demo_dataset), "--mlflow-uri", registry]
    )
    assert (
        r.exit_code != 0
        and "cannot fetch models:/nope/1" in r.output
        and "Traceback" not in r.output
    )
