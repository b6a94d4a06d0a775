"""Greedy ensembles: combining outputs, Caruana selection, and an ensemble export that loads,
predicts (in process, through the CLI in a fresh process, as an MLflow pyfunc) like one model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import autofuse
from autofuse.checkpoints import CheckpointStore
from autofuse.ensemble import ENSEMBLE_FILE, combine, greedy_selection
from autofuse.errors import ConfigError
from autofuse.export import export_trial, write_ensemble_export
from autofuse.metrics import compute_metrics
from autofuse.paths import Paths
from autofuse.predict import EnsemblePredictor, Predictor, find_export_dir
from autofuse.study import search

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "spaces" / "tiny.yaml"
CLASSES = ["0", "1", "2", "3"]
PROBA = [f"proba_{c}" for c in CLASSES]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# ----------------------------------------------------------------------------------- combine
def test_combine_classification_averages_probabilities_and_returns_their_log():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 3)), rng.normal(size=(5, 3)) * 3
    out = combine([a, b], [0.75, 0.25], "classification")
    want = 0.75 * _softmax(a) + 0.25 * _softmax(b)
    assert out.shape == (5, 3)
    assert np.allclose(np.exp(out), want) and np.allclose(_softmax(out), want)
    assert (out.argmax(axis=1) == want.argmax(axis=1)).all()
    # weights are normalised; a member with weight 0 does not count
    assert np.allclose(combine([a, b], [3, 1], "classification"), out)
    assert np.allclose(combine([a, b], [1, 0], "classification"), np.log(_softmax(a)))
    # extreme logits stay finite, and compute_metrics takes the result
    big = np.array([[1000.0, -1000.0, 0.0]])
    assert np.isfinite(combine([big, big], [1, 1], "classification")).all()
    m = compute_metrics("classification", np.array([0, 1, 2, 0, 1]), out)
    assert set(m) == {"accuracy", "macro_f1"}


def test_combine_multilabel_averages_sigmoids_and_returns_the_logit():
    a = np.array([[4.0, -1.0], [-4.0, 1.0], [0.2, 3.0]])
    b = np.array([[-1.0, 4.0], [1.0, -4.0], [-0.3, -2.0]])
    out = combine([a, b], [0.5, 0.5], "multilabel")
    want = 0.5 * _sigmoid(a) + 0.5 * _sigmoid(b)
    assert np.allclose(_sigmoid(out), want)
    assert ((out > 0) == (want > 0.5)).all()  # thresholds the averaged probability at 0.5
    assert np.isfinite(combine([np.full((1, 2), 1e4)] * 2, [1, 1], "multilabel")).all()


def test_combine_regression_is_the_weighted_mean():
    a, b = np.array([[1.0], [2.0]]), np.array([[3.0], [6.0]])
    out = combine([a, b], [1.0, 3.0], "regression")
    assert out.shape == (2, 1) and np.allclose(out, [[2.5], [5.0]])


@pytest.mark.parametrize(
    ("outputs", "weights", "task"),
    [
        ([np.zeros((2, 3)), np.zeros((2, 4))], [1, 1], "classification"),  # shapes differ
        ([np.zeros((2, 3))], [1, 1], "classification"),  # one weight per member
        ([np.zeros((2, 3)), np.zeros((2, 3))], [1, -1], "classification"),
        ([np.zeros((2, 3)), np.zeros((2, 3))], [0, 0], "classification"),
        ([], [], "regression"),
        ([np.zeros((2, 1))], [1], "ranking"),
    ],
)
def test_combine_rejects_bad_arguments(outputs, weights, task):
    with pytest.raises(ValueError):
        combine(outputs, weights, task)


# ----------------------------------------------------------------------------------- greedy
def _check_score(outputs, y, task, metric, weights, score):
    assert np.isclose(sum(weights), 1.0)
    assert score == compute_metrics(task, y, combine(outputs, weights, task))[metric]


def test_greedy_finds_two_complementary_classifiers_and_ignores_a_useless_one():
    y = np.array([0, 0, 1, 1])
    a = np.log([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])  # right on rows 0-1
    b = np.log([[0.4, 0.6], [0.4, 0.6], [0.1, 0.9], [0.1, 0.9]])  # right on rows 2-3
    useless = np.log(np.full((4, 2), 0.5))
    outputs = [a, b, useless]
    for o in outputs:
        assert compute_metrics("classification", y, o)["accuracy"] == 0.5
    weights, score = greedy_selection(outputs, y, "classification", "accuracy", "maximize")
    assert weights == [0.5, 0.5, 0.0] and score == 1.0
    _check_score(outputs, y, "classification", "accuracy", weights, score)


def test_greedy_selects_with_replacement_for_regression():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    outputs = [(y + 1.0)[:, None], (y - 1.0)[:, None], (y + 0.5)[:, None]]
    # round 1: the best single model (+0.5); round 2: + the -1 model (mean -0.25);
    # round 3: +0.5 again (mean 0): 2/3 and 1/3, the first model unused
    weights, score = greedy_selection(outputs, y, "regression", "rmse", "minimize", rounds=10)
    assert np.allclose(weights, [0.0, 1 / 3, 2 / 3]) and score < 1e-12
    _check_score(outputs, y, "regression", "rmse", weights, score)
    # one round is the best single model
    weights, score = greedy_selection(outputs, y, "regression", "rmse", "minimize", rounds=1)
    assert weights == [0.0, 0.0, 1.0] and score == pytest.approx(0.5)


def test_greedy_multilabel_macro_f1():
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    sign = 2 * y - 1
    a = np.stack([4.0 * sign[:, 0], -1.0 * sign[:, 1]], axis=1)  # label 0 sure, label 1 wrong
    b = np.stack([-1.0 * sign[:, 0], 4.0 * sign[:, 1]], axis=1)  # the other way round
    assert compute_metrics("multilabel", y, a)["macro_f1"] == 0.5
    weights, score = greedy_selection([a, b], y, "multilabel", "macro_f1", "maximize")
    assert weights == [0.5, 0.5] and score == 1.0
    _check_score([a, b], y, "multilabel", "macro_f1", weights, score)


def test_greedy_ties_go_to_the_earlier_member_and_the_shorter_ensemble():
    y = np.array([0, 1, 1])
    a = np.log([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    weights, score = greedy_selection([a, a.copy()], y, "classification", "accuracy", "maximize")
    assert weights == [1.0, 0.0] and score == pytest.approx(2 / 3)
    r = np.array([[1.0], [2.0]])
    weights, _ = greedy_selection([r + 1, r - 1], r[:, 0], "regression", "mae", "minimize", 1)
    assert weights == [1.0, 0.0]  # equal error: the earlier-listed member


def test_greedy_rejects_bad_arguments():
    y, o = np.array([0, 1]), [np.zeros((2, 2))]
    with pytest.raises(ValueError, match="unknown metric 'rmse'"):
        greedy_selection(o, y, "classification", "rmse", "maximize")
    with pytest.raises(ValueError, match="direction"):
        greedy_selection(o, y, "classification", "accuracy", "up")
    with pytest.raises(ValueError, match="rounds"):
        greedy_selection(o, y, "classification", "accuracy", "maximize", rounds=0)
    with pytest.raises(ValueError, match="targets"):
        greedy_selection(o, np.array([0, 1, 1]), "classification", "accuracy", "maximize")


def test_find_export_dir_prefers_the_ensemble_over_its_members(tmp_path):
    ens = tmp_path / "artifacts" / "export"
    (ens / "member_0").mkdir(parents=True)
    (ens / "member_0" / "architecture.json").write_text("{}")
    (ens / ENSEMBLE_FILE).write_text("{}")
    assert find_export_dir(tmp_path) == ens
    assert find_export_dir(ens) == ens
    assert find_export_dir(ens / "member_0") == ens / "member_0"


# ----------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def members(tmp_path_factory, demo_dataset) -> tuple[Path, Path]:
    """Two exported finalists of a tiny real search (CPU: reproducible to the bit)."""
    work = tmp_path_factory.mktemp("ens_work")
    search(
        demo_dataset,
        study="ens",
        trials=4,
        space=str(TINY),
        workdir=work,
        progress=False,
        mlflow_uri="off",
        device="cpu",
    )
    kept = sorted(CheckpointStore(Paths.resolve(work).study_dir("ens")).finalists())
    assert len(kept) >= 2
    out = tmp_path_factory.mktemp("ens_exports")
    for name, n in zip(("a", "b"), kept[:2], strict=False):
        export_trial("ens", out / name, trial=n, workdir=work)
    return out / "a", out / "b"


@pytest.fixture(scope="module")
def ensemble(members, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ens_out") / "ensemble"
    meta = {
        "study": "ens",
        "method": "test weights",
        "metric": "accuracy",
        "direction": "maximize",
        "metrics": {"val": {"accuracy": 0.75}},
    }
    assert write_ensemble_export(out, list(members), [0.6, 0.4], meta) == out
    return out


@pytest.fixture(scope="module")
def expected(ensemble, demo_dataset) -> pd.DataFrame:
    model = autofuse.load(ensemble, device="cpu")
    assert isinstance(model, EnsemblePredictor)
    return model.predict(demo_dataset)


def test_ensemble_export_folder(ensemble, members):
    doc = json.loads((ensemble / ENSEMBLE_FILE).read_text())
    assert doc["format"] == "autofuse.ensemble" and doc["version"] == 1
    assert doc["task"] == "classification"
    assert doc["members"] == [
        {"path": "member_0", "weight": 0.6},
        {"path": "member_1", "weight": 0.4},
    ]
    assert doc["meta"]["study"] == "ens" and doc["meta"]["autofuse_version"]
    for k, m in enumerate(members):
        copy = ensemble / f"member_{k}"
        assert (copy / "architecture.json").read_bytes() == (m / "architecture.json").read_bytes()
        assert (copy / "model.safetensors").read_bytes() == (m / "model.safetensors").read_bytes()
    card = (ensemble / "model_card.md").read_text()
    trial = json.loads((members[1] / "architecture.json").read_text())["export"]["trial"]
    for needle in (
        "# Ensemble of 2 models from study ens",
        "| member_1 | 0.4000 | ens |",
        f"| {trial} |",
        "encoder_decoder",
        "| ensemble | val | accuracy 0.7500 |",
    ):
        assert needle in card


def test_ensemble_predicts_the_weighted_average_of_its_members(
    ensemble, members, expected, demo_dataset
):
    single = [autofuse.load(m, device="cpu") for m in members]
    assert all(isinstance(p, Predictor) for p in single)
    preds = [p.predict(demo_dataset) for p in single]
    assert list(expected.columns) == list(preds[0].columns) == ["id", "prediction", *PROBA]
    assert list(expected["id"]) == list(preds[0]["id"])
    want = 0.6 * preds[0][PROBA].to_numpy() + 0.4 * preds[1][PROBA].to_numpy()
    got = expected[PROBA].to_numpy()
    assert np.allclose(got, want, atol=1e-6)
    assert list(expected["prediction"]) == [CLASSES[k] for k in want.argmax(axis=1)]
    assert not np.allclose(got, preds[0][PROBA].to_numpy())  # not just one member


def test_greedy_selection_on_the_members_validation_outputs(members, demo_dataset):
    rows = pd.read_csv(demo_dataset / "samples.csv", dtype=str)
    val = (rows["split"] == "val").to_numpy()
    y = np.array([CLASSES.index(v) for v in rows["label"][val]])
    single = [autofuse.load(m, device="cpu") for m in members]
    ds = single[0].dataset(demo_dataset)
    outputs = [p.predict_outputs(ds)[val] for p in single]
    weights, score = greedy_selection(outputs, y, "classification", "accuracy", "maximize")
    best_single = max(compute_metrics("classification", y, o)["accuracy"] for o in outputs)
    assert score >= best_single
    _check_score(outputs, y, "classification", "accuracy", weights, score)


def _fresh(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )


def test_cli_predicts_with_an_ensemble_in_a_fresh_process(
    ensemble, expected, demo_dataset, tmp_path
):
    out = tmp_path / "p.csv"
    cmd = ["-m", "autofuse.cli", "predict", str(ensemble), str(demo_dataset), "--out", str(out)]
    r = _fresh([*cmd, "--device", "cpu"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    pred = pd.read_csv(out, dtype={"id": str, "prediction": str})
    assert list(pred.columns) == list(expected.columns)
    assert list(pred["id"]) == list(expected["id"])
    assert list(pred["prediction"]) == list(expected["prediction"])
    assert np.allclose(pred[PROBA].to_numpy(), expected[PROBA].to_numpy(), rtol=0, atol=1e-12)


def test_ensemble_as_an_mlflow_pyfunc_model(ensemble, expected, demo_dataset, tmp_path):
    from autofuse.mlflow_model import log_pyfunc  # MLflow: only this test needs it

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert log_pyfunc(ensemble, registered_name="ens", tracking_uri=uri) == "models:/ens/1"
    script = textwrap.dedent(f"""
        import json, sys
        import mlflow, pandas as pd
        mlflow.set_tracking_uri({uri!r})
        model = mlflow.pyfunc.load_model("models:/ens/1", model_config={{"device": "cpu"}})
        df = pd.read_csv({str(demo_dataset / "samples.csv")!r}).drop(columns=["label", "split"])
        df["image_path"] = [None if p != p else {str(demo_dataset)!r} + "/" + p
                            for p in df["image_path"]]
        out = model.predict(df)
        search = sorted(m for m in sys.modules if m.split(".")[0] == "optuna"
                        or m in ("autofuse.study", "autofuse.space", "autofuse.export"))
        print(json.dumps({{"search": search, "pred": out.to_dict(orient="list")}}))
    """)
    r = _fresh(["-c", script], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["search"] == []  # no Optuna, no search code
    assert got["pred"]["id"] == list(expected["id"])
    assert got["pred"]["prediction"] == list(expected["prediction"])
    assert np.allclose(
        np.array([got["pred"][c] for c in PROBA]).T, expected[PROBA].to_numpy(), atol=1e-12
    )


def test_members_must_share_classes(ensemble, members, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(members[1], other)
    doc = json.loads((other / "architecture.json").read_text())
    doc["dataset_info"]["classes"] = ["a", "b", "c", "d"]
    (other / "architecture.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="classes"):
        write_ensemble_export(tmp_path / "bad", [members[0], other], [0.5, 0.5], {})
    assert not (tmp_path / "bad").exists()
    # an ensemble folder edited by hand is refused at load time
    edited = tmp_path / "edited"
    shutil.copytree(ensemble, edited)
    shutil.copy(other / "architecture.json", edited / "member_1" / "architecture.json")
    with pytest.raises(ConfigError, match="classes"):
        autofuse.load(edited, device="cpu")


def test_zero_weight_members_are_left_out_and_out_folders_are_checked(
    members, demo_dataset, tmp_path
):
    out = tmp_path / "solo"
    write_ensemble_export(out, list(members), [1.0, 0.0], {})
    assert sorted(p.name for p in out.iterdir()) == [ENSEMBLE_FILE, "member_0", "model_card.md"]
    solo = autofuse.load(out, device="cpu").predict(demo_dataset)
    single = autofuse.load(members[0], device="cpu").predict(demo_dataset)
    assert np.allclose(solo[PROBA].to_numpy(), single[PROBA].to_numpy(), atol=1e-6)
    # an earlier export there is replaced; a folder that is not an export is refused
    write_ensemble_export(out, list(members), [0.5, 0.5], {})
    assert json.loads((out / ENSEMBLE_FILE).read_text())["members"][1]["weight"] == 0.5
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not an autofuse export"):
        write_ensemble_export(junk, list(members), [0.5, 0.5], {})
    assert (junk / "notes.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="itself an ensemble"):
        write_ensemble_export(tmp_path / "nested", [out, members[0]], [0.5, 0.5], {})
