"""A search logging to a real `mlflow server` process: nested runs, metrics and leaderboard order
match the SQL history; with MLflow unreachable the search goes on and `mlflow sync` back-fills."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from history_check import assert_consistent
from mlflow.tracking import MlflowClient

from autofuse.cli import main
from autofuse.leaderboard import leaderboard
from autofuse.storage.history import HistoryStore
from autofuse.study import search

TINY = str(Path(__file__).parents[1] / "spaces" / "tiny.yaml")


def _runs(uri: str, study: str) -> dict[int, object]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(study)
    assert exp is not None
    out = {}
    for r in client.search_runs([exp.experiment_id], max_results=1000):
        if r.data.tags.get("autofuse.trial") is not None:
            out[int(r.data.tags["autofuse.trial"])] = r
    return out


@pytest.mark.slow
def test_search_logs_nested_runs_matching_sql(demo_dataset, tmp_path, mlflow_server):
    search(
        demo_dataset,
        study="mlf",
        trials=5,
        space=TINY,
        workdir=tmp_path,
        progress=False,
        mlflow_uri=mlflow_server,
        report=False,
    )
    url = f"sqlite:///{tmp_path / 'trials' / 'autofuse.db'}"
    hs = HistoryStore(url)
    recs = {r.number: r for r in hs.trials("mlf")}
    runs = _runs(mlflow_server, "mlf")
    parent = hs.study("mlf").mlflow_parent_run_id
    assert parent and set(runs) == set(recs)
    for n, rec in recs.items():
        run = runs[n]
        assert run.info.run_id == rec.mlflow_run_id
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert run.data.tags["autofuse.family"] == rec.family
        if rec.status == "COMPLETE":
            assert run.info.status == "FINISHED"
            assert run.data.metrics["val_accuracy"] == pytest.approx(rec.value)
            assert run.data.metrics["test_accuracy"] == pytest.approx(rec.test_metrics["accuracy"])
            steps = MlflowClient(mlflow_server).get_metric_history(run.info.run_id, "train_loss")
            assert [m.step for m in steps] == [h["epoch"] for h in rec.history]
    # the MLflow UI ordering (metrics.val_accuracy DESC) is the leaderboard's
    board = [r["trial"] for r in leaderboard("mlf", storage=url)]
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("mlf")
    ordered = client.search_runs(
        [exp.experiment_id],
        filter_string="attributes.status = 'FINISHED' and tags.`autofuse.status` = 'COMPLETE'",
        order_by=["metrics.val_accuracy DESC", "tags.`autofuse.trial` ASC"],
    )
    values = [r.data.metrics["val_accuracy"] for r in ordered]
    assert values == sorted(values, reverse=True)
    assert [recs[n].value for n in board] == pytest.approx(values)
    # the best model is logged and registered under the study's name, once
    assert client.get_registered_model("mlf").name == "mlf"
    assert len(client.search_model_versions("name='mlf'")) == 1
    assert_consistent(url, "mlf", mlflow_server)


@pytest.mark.slow
def test_unreachable_mlflow_then_sync(demo_dataset, tmp_path, mlflow_server):
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    res = search(
        demo_dataset,
        study="offline",
        trials=3,
        space=TINY,
        workdir=tmp_path,
        progress=False,
        mlflow_uri=dead,
        report=False,
    )
    assert res.summary["best_trial"] is not None  # the search went on
    url = f"sqlite:///{tmp_path / 'trials' / 'autofuse.db'}"
    recs = HistoryStore(url).trials("offline")
    assert len(recs) == 3 and all(r.mlflow_run_id is None for r in recs)  # SQL complete, no runs
    r = CliRunner().invoke(
        main,
        [
            "mlflow",
            "sync",
            "--study",
            "offline",
            "--mlflow-uri",
            mlflow_server,
            "--workdir",
            str(tmp_path),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "3 MLflow run(s) created" in r.output
    assert set(_runs(mlflow_server, "offline")) == {0, 1, 2}
    r = CliRunner().invoke(
        main,
        [
            "mlflow",
            "sync",
            "--study",
            "offline",
            "--mlflow-uri",
            mlflow_server,
            "--workdir",
            str(tmp_path),
        ],
    )
    assert "0 MLflow run(s) created" in r.output  # idempotent
    # the sync also closed the study's parent run and registered its best model, once
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("offline")
    parents = client.search_runs([exp.experiment_id], "tags.`autofuse.role` = 'study'")
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert len(client.search_model_versions("name='offline'")) == 1
    # ... with the leaderboard as its artifact, replaced (not appended to) by the second sync,
    # and the best trial's metrics and design on the parent run
    pid = parents[0].info.run_id
    assert {f.path for f in client.list_artifacts(pid)} >= {"leaderboard.json", "best"}
    table = json.loads(
        Path(client.download_artifacts(pid, "leaderboard.json", str(tmp_path))).read_text()
    )
    assert [row[table["columns"].index("trial")] for row in table["data"]][0] == res.summary[
        "best_trial"
    ]
    assert len(table["data"]) == res.summary["trials"]["completed"]
    assert parents[0].data.metrics["val_accuracy"] == pytest.approx(res.summary["best_value"])
    assert parents[0].data.tags["autofuse.family"] == res.summary["spec"]["fusion"]["family"]
    assert client.get_experiment(exp.experiment_id).tags["mlflow.experimentKind"] == (
        "custom_model_development"
    )
    assert_consistent(url, "offline", mlflow_server)
