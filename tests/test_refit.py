"""A refit on every labelled row (issue 20): ``search --refit-full`` retrains the winner on train +
val and reports its test next to the selected model's; ``export --retrain`` works on a staged
study, for a stage-2 design (its stage-1 encoders trained again, end to end) and for a finalist,
and the export predicts in a fresh process; ``export --refit-full`` refits each member of an
ensemble. All through the package's one training loop (``train.fit``)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml

from autofuse.data import Dataset
from autofuse.runner import CandidateRunner
from autofuse.spec import ArchitectureSpec, FusionSpec, HeadSpec, TrainingSpec
from autofuse.stages import FINALIST, FUSION, stage_of
from autofuse.study import search
from autofuse.train import fit

STAGED = Path(__file__).parent / "spaces" / "staged.yaml"


def _fresh(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "autofuse.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


@pytest.fixture(scope="module")
def refit_study(demo_dataset, tmp_path_factory):
    work = tmp_path_factory.mktemp("refit")
    block = yaml.safe_load(STAGED.read_text())["stages"] | {"finalists": 2, "seeds": 1}
    space = work / "refit.yaml"
    space.write_text(yaml.safe_dump({"extends": str(STAGED), "stages": block}))
    res = search(
        demo_dataset,
        study="rf",
        space=str(space),
        trials=3,
        workdir=work,
        progress=False,
        mlflow_uri="off",
        refit_full=True,
    )
    st = optuna.load_study(study_name="rf", storage=f"sqlite:///{work / 'trials/autofuse.db'}")
    return work, res, st


def test_search_refit_full_reports_its_test_next_to_the_selected_model(refit_study, tmp_path):
    work, res, _ = refit_study
    s = res.summary
    rf = s["refit_full"]
    assert rf.get("error") is None and rf["dir"]
    assert set(rf["test"]) >= {"accuracy", "macro_f1"} and 0.0 <= rf["test"]["accuracy"] <= 1.0
    assert rf["trials"] == s["winner"]["trials"]
    doc = json.loads((Path(rf["dir"]) / "architecture.json").read_text())
    if "export" in doc:  # a single model: the refit is recorded in the export
        assert doc["export"]["retrained"] and doc["export"]["retrain"]["splits"] == ["train", "val"]
    report = (work / "reports" / "rf" / "report.md").read_text()
    assert "winner refit on train + val" in report


def _export_and_predict(work: Path, dataset: Path, trial: int, tmp: Path) -> dict:
    out = tmp / f"t{trial}"
    r = _fresh(
        ["export", "--study", "rf", "--trial", str(trial), "--retrain", "--out", str(out)]
        + ["--workdir", str(work), "--device", "cpu"],
        cwd=tmp,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "retrained on train + val" in r.stdout
    pred = tmp / f"p{trial}.csv"
    r = _fresh(["predict", str(out), str(dataset), "--out", str(pred), "--device", "cpu"], tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = pd.read_csv(dataset / "samples.csv", dtype=str)
    assert len(pd.read_csv(pred)) == len(rows)
    return json.loads((out / "architecture.json").read_text())


def test_export_retrain_of_a_stage_two_design(refit_study, demo_dataset, tmp_path):
    work, _, st = refit_study
    t = next(
        t
        for t in st.trials
        if stage_of(t) == FUSION and t.state == optuna.trial.TrialState.COMPLETE
    )
    doc = _export_and_predict(work, demo_dataset, t.number, tmp_path)
    # its stage-1 encoders trained again, end to end, from their stage-1 weights
    assert sorted(doc["export"]["retrain"]["trained_stage1_encoders"]) == sorted(
        t.user_attrs["spec"]["encoders"]
    )
    assert all(e["mode"] != "frozen" for e in doc["spec"]["encoders"].values())
    assert doc["spec"]["training"]["encoder_lr_scale"] == pytest.approx(0.1)
    assert doc["export"]["retrain"]["epochs"] == t.user_attrs["best_epoch"]


def test_export_retrain_of_a_finalist(refit_study, demo_dataset, tmp_path):
    work, _, st = refit_study
    t = next(
        t
        for t in st.trials
        if stage_of(t) == FINALIST and t.state == optuna.trial.TrialState.COMPLETE
    )
    doc = _export_and_predict(work, demo_dataset, t.number, tmp_path)
    assert doc["export"]["retrain"]["epochs"] == t.user_attrs["best_epoch"]
    assert doc["spec"]["training"]["encoder_lr_scale"] == pytest.approx(0.1)  # kept


def test_export_refit_full_of_an_ensemble_refits_every_member(refit_study, tmp_path):
    work, _, st = refit_study
    fin = [
        t
        for t in st.trials
        if stage_of(t) == FINALIST and t.state == optuna.trial.TrialState.COMPLETE
    ]
    assert len(fin) >= 2
    # the study's winner made an ensemble of its two finalists (whether an ensemble wins
    # depends on the data; the refit path is what is checked here)
    old = st.user_attrs["winner"]
    st.set_user_attr(
        "winner",
        {
            **old,
            "kind": "ensemble",
            "trials": [fin[0].number, fin[1].number],
            "weights": [0.5, 0.5],
        },
    )
    try:
        out = tmp_path / "ens"
        r = _fresh(
            ["export", "--study", "rf", "--refit-full", "--out", str(out)]
            + ["--workdir", str(work), "--device", "cpu"],
            cwd=tmp_path,
        )
    finally:
        st.set_user_attr("winner", old)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "retrained on train + val" in r.stdout
    members = sorted(out.glob("member_*"))
    assert len(members) == 2
    for m in members:
        doc = json.loads((m / "architecture.json").read_text())
        assert doc["export"]["retrained"] and doc["export"]["retrain"]["splits"] == ["train", "val"]


def test_fit_without_validation_rows_trains_its_epochs_and_keeps_the_last(demo_dataset, tmp_path):
    """No validation rows (a refit): exactly ``epochs`` epochs, whatever the patience, and the
    model holds the last epoch's weights (there is no best epoch to go back to)."""
    ds = Dataset.load(demo_dataset)
    spec = ArchitectureSpec(
        encoders={"tabular": {"name": "tabular.mlp", "mode": "scratch", "dim": 16}},
        fusion=FusionSpec(family="encoder_decoder", method="decision", point="late"),
        head=HeadSpec(fused_dim=16),
        training=TrainingSpec(lr=1e-2, batch_size=32, epochs=50, patience=1, seed=0),
    )
    runner = CandidateRunner(ds, tmp_path / "cache", torch.device("cpu"))
    data, info = runner.prepare(spec)
    rows = np.sort(np.concatenate([data.splits["train"], data.splits["val"]]))
    data = dataclasses.replace(data, splits={**data.splits, "train": rows, "val": rows[:0]})
    model = runner.build(spec, info)
    seen: dict[int, dict] = {}

    def keep(epoch: int, metrics: dict) -> None:
        seen[epoch] = {k: v.clone() for k, v in model.state_dict().items()}

    t = spec.training
    res = fit(model, data, lr=t.lr, weight_decay=t.weight_decay, batch_size=32, epochs=4,
              patience=1, aux_weight=0.0, seed=0, device=torch.device("cpu"), on_epoch=keep)  # fmt: skip
    assert res.epochs_run == 4 and res.best_epoch == 4
    assert [set(h) for h in res.history] == [{"epoch", "train_loss"}] * 4
    final = model.state_dict()
    assert all(torch.equal(final[k], v) for k, v in seen[4].items())
    assert not all(torch.equal(final[k], v) for k, v in seen[1].items())
    # the runner's refit: train + val rows, the epochs asked for, test metrics, no validation
    r = runner.refit(spec, 3)
    assert r.epochs_run == 3 and r.val_metrics == {} and set(r.test_metrics) >= {"accuracy"}
