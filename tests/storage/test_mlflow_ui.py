"""The MLflow leaderboard as users meet it (issue 14, item 4), on a real ``mlflow server``:

- the version the search itself registers is the self-contained pyfunc model: ``autofuse
  predict models:/STUDY/1`` in a fresh process, ``autofuse.load`` and ``mlflow.pyfunc.load_model``
  agree (a single winner, and a staged search's winner);
- the parent run holds the best trial's metrics, the winner's design, ``report.html`` and
  ``leaderboard.json``; a resumed study replaces them (no duplicate rows, no second version for
  the same best);
- headless Chromium opens the experiment link autofuse gives and sees the Runs page with the
  parent run and a metric column, and the parent run's artifacts page lists the leaderboard
  and the report.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from browser import chromium
from mlflow.tracking import MlflowClient

from autofuse.study import search

SPACES = Path(__file__).parents[1] / "spaces"
TINY = str(SPACES / "tiny.yaml")
STAGED = str(SPACES / "staged.yaml")


def _parent(client: MlflowClient, study: str):
    exp = client.get_experiment_by_name(study)
    (parent,) = client.search_runs([exp.experiment_id], "tags.`autofuse.role` = 'study'")
    return exp, parent


@contextlib.contextmanager
def _tracking(uri: str):
    """MLflow's global tracking URI set to ``uri`` for fluent calls, then restored."""
    import mlflow

    was = mlflow.get_tracking_uri() if mlflow.tracking.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(was)


def _table(uri: str, exp, run) -> pd.DataFrame:
    """The parent run's ``leaderboard.json`` as MLflow's ``load_table`` reads it (it searches the
    runs with the global tracking URI)."""
    with _tracking(uri):
        return MlflowClient(uri).load_table(
            exp.experiment_id, "leaderboard.json", [run.info.run_id]
        )


def _predict_cli(uri: str, model: str, data: Path, out: Path, cwd: Path) -> pd.DataFrame:
    """``autofuse predict`` in a fresh process (nothing of the search imported or cached)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "autofuse.cli", "predict", model, str(data), "--out", str(out)]
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    return pd.read_csv(out)


def _check_registered_model(uri: str, study: str, dataset: Path, tmp: Path) -> pd.DataFrame:
    """Version 1 of ``study`` predicts the same through the CLI, ``autofuse.load`` and
    ``mlflow.pyfunc.load_model``; returns the CLI's predictions."""
    import mlflow.pyfunc

    import autofuse

    model = f"models:/{study}/1"
    by_cli = _predict_cli(uri, model, dataset, tmp / "pred.csv", tmp)
    assert len(by_cli) == len(pd.read_csv(dataset / "samples.csv"))
    by_load = autofuse.load(model, device="cpu", tracking_uri=uri).predict(dataset)
    with _tracking(uri):
        pyfunc = mlflow.pyfunc.load_model(model, model_config={"device": "cpu"})
    rows = pd.read_csv(dataset / "samples.csv").drop(columns=["label", "split"])
    by_pyfunc = pyfunc.predict(rows, params={"root": str(dataset)})
    assert list(by_cli["prediction"].astype(str)) == list(by_load["prediction"].astype(str))
    assert list(by_pyfunc["prediction"].astype(str)) == list(by_load["prediction"].astype(str))
    probas = [c for c in by_load.columns if c.startswith("proba_")]
    assert probas
    for c in probas:
        assert by_pyfunc[c].to_numpy() == pytest.approx(by_load[c].to_numpy(), abs=1e-5)
        assert by_cli[c].to_numpy() == pytest.approx(by_load[c].to_numpy(), abs=1e-5)
    return by_cli


@pytest.fixture(scope="module")
def finished_study(demo_dataset, tmp_path_factory, mlflow_server):
    """A tiny search logged to the server, with its report: (workdir, summary)."""
    work = tmp_path_factory.mktemp("ui_study")
    res = search(
        demo_dataset,
        study="ui",
        trials=3,
        space=TINY,
        workdir=work,
        progress=False,
        mlflow_uri=mlflow_server,
        report=True,
    )
    return work, res.summary


def test_search_registers_a_pyfunc_model(finished_study, demo_dataset, mlflow_server, tmp_path):
    work, summary = finished_study
    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)
    (version,) = client.search_model_versions("name='ui'")
    assert version.version == "1"
    exp, parent = _parent(client, "ui")
    assert version.run_id == parent.info.run_id
    assert version.source == parent.data.tags["autofuse.best_model_uri"]
    local = Path(client.download_artifacts(parent.info.run_id, "best", str(tmp_path)))
    assert (local / "architecture.json").is_file()
    # the pyfunc model of autofuse.mlflow_model (models from code), not mlflow.pytorch
    import mlflow.models

    with _tracking(mlflow_server):
        flavors = mlflow.models.get_model_info("models:/ui/1").flavors
    assert set(flavors) == {"python_function"}
    assert flavors["python_function"]["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    _check_registered_model(mlflow_server, "ui", demo_dataset, tmp_path)
    assert summary["mlflow"]["registered_model"] == "models:/ui/1"


def test_parent_run_is_the_leaderboard(finished_study, mlflow_server):
    work, summary = finished_study
    client = MlflowClient(mlflow_server)
    exp, parent = _parent(client, "ui")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    m, tags = parent.data.metrics, parent.data.tags
    assert parent.info.status == "FINISHED"
    assert m["val_accuracy"] == pytest.approx(summary["val_metrics"]["accuracy"])
    assert m["test_accuracy"] == pytest.approx(summary["test_metrics"]["accuracy"])
    assert m["n_params"] == summary["n_params"] and m["latency_ms"] == pytest.approx(
        summary["latency_ms"]
    )
    spec = summary["spec"]
    assert tags["autofuse.family"] == spec["fusion"]["family"]
    assert tags["autofuse.method"] == spec["fusion"]["method"]
    assert tags["autofuse.point"] == spec["fusion"]["point"]
    assert json.loads(tags["autofuse.encoders"]) == {
        k: e["name"] for k, e in spec["encoders"].items()
    }
    assert tags["autofuse.winner"] == "single"
    assert tags["autofuse.design_trial"] == str(summary["best_trial"])
    files = {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert {"report.html", "leaderboard.json", "best"} <= files
    html = Path(client.download_artifacts(parent.info.run_id, "report.html", str(work / "dl")))
    assert html.read_bytes() == Path(summary["report"]["html"]).read_bytes()
    table = _table(mlflow_server, exp, parent)
    assert len(table) == summary["trials"]["completed"]
    assert list(table["trial"])[0] == summary["best_trial"]
    assert summary["mlflow"]["experiment_url"] == (
        f"{mlflow_server}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
        "&orderByKey=metrics.%60val_accuracy%60&orderByAsc=false"
    )
    assert summary["mlflow"]["run_url"] == (
        f"{mlflow_server}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}"
        "?workflowType=machine_learning"
    )


def _text(dom: str) -> str:
    """The visible text of a dumped DOM (styles and scripts dropped, whitespace collapsed)."""
    dom = re.sub(r"<(style|script)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def _page(url: str, tmp: Path) -> str:
    res = chromium(
        ["--window-size=1920,1080", "--virtual-time-budget=15000", "--dump-dom", url],
        tmp,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return _text(res.stdout)


def test_mlflow_ui_shows_runs_and_artifacts(finished_study, mlflow_server, tmp_path):
    """What a user sees following the links autofuse prints (``summary.json``'s ``mlflow``)."""
    work, summary = finished_study
    links = summary["mlflow"]
    client = MlflowClient(mlflow_server)
    exp, parent = _parent(client, "ui")
    runs = _page(links["experiment_url"], tmp_path / "runs")
    # the Runs page (not the GenAI overview), sorted by the study's metric, every trial and the
    # parent run with its registered model ("ui v1" in the Models column)
    # the model-training navigation ("Model registry"), not the GenAI one (its Overview shows
    # "Token Usage"; its "Training runs" tab is what `#/experiments/<id>/runs` alone opens)
    assert "Run Name" in runs and "Model registry" in runs, runs[:3000]
    assert "Token Usage" not in runs and "Training runs" not in runs, runs[:3000]
    assert "Sort: val_accuracy" in runs, runs[:3000]
    assert "ui v1" in runs and all(f"trial-{n}" in runs for n in range(3)), runs[:3000]
    # the parent run's page: the best trial's metrics and the winner's design
    page = _page(links["run_url"], tmp_path / "run")
    value = f"val_accuracy {parent.data.metrics['val_accuracy']}"
    assert value in page and "test_accuracy" in page and "n_params" in page, page[:3000]
    assert f"autofuse.family : {summary['spec']['fusion']['family']}" in page, page[-3000:]
    arts = _page(links["run_url"].replace("?", "/artifacts?", 1), tmp_path / "artifacts")
    assert "leaderboard.json" in arts and "report.html" in arts, arts[:3000]


def test_resumed_study_replaces_the_leaderboard(finished_study, demo_dataset, mlflow_server):
    work, first = finished_study
    res = search(
        demo_dataset,
        study="ui",
        trials=4,
        space=TINY,
        workdir=work,
        progress=False,
        mlflow_uri=mlflow_server,
        report=False,
    )
    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)
    exp, parent = _parent(client, "ui")
    table = _table(mlflow_server, exp, parent)
    assert len(table) == res.summary["trials"]["completed"]  # replaced, not appended
    assert sorted(table["trial"]) == sorted(set(table["trial"]))
    versions = client.search_model_versions("name='ui'")
    same_best = res.summary["best_trial"] == first["best_trial"]
    assert len(versions) == (1 if same_best else 2)
    assert parent.data.tags["autofuse.best_model_key"] == f"trial:{res.summary['best_trial']}"


@pytest.mark.slow
def test_staged_search_registers_its_winner(demo_dataset, tmp_path, mlflow_server):
    res = search(
        demo_dataset,
        study="ui_staged",
        space=STAGED,
        workdir=tmp_path,
        progress=False,
        mlflow_uri=mlflow_server,
        report=False,
    )
    winner = res.summary["winner"]
    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)
    (version,) = client.search_model_versions("name='ui_staged'")
    exp, parent = _parent(client, "ui_staged")
    assert parent.data.tags["autofuse.winner"] == winner["kind"]
    assert parent.data.tags["autofuse.winner_trials"] == ",".join(map(str, winner["trials"]))
    assert parent.data.metrics["test_accuracy"] == pytest.approx(winner["test"]["accuracy"])
    _check_registered_model(mlflow_server, "ui_staged", demo_dataset, tmp_path)
