"""A staged search under --time-budget spends its stages' time (issue 20), on the demo data:
stage 1 tunes its encoders while its share has time left and stage 2 uses each choice's best
run; a stage 3 that cannot fit an epoch is not run and says so (summary, CLI, report); the
finalists' seeds train differently."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from autofuse.space import load_space
from autofuse.stages import (
    FINALIST,
    FUSION,
    UNIMODAL,
    enqueue_finalists,
    fusion_choices,
    stage_of,
)
from autofuse.study import search
from autofuse.tuning import TUNED

STAGED = Path(__file__).parent / "spaces" / "staged.yaml"


def _space(tmp: Path, name: str, **stages) -> str:
    """staged.yaml with its ``stages:`` block changed (``extends`` replaces whole keys)."""
    block = yaml.safe_load(STAGED.read_text())["stages"] | stages
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"extends": str(STAGED), "name": name, "stages": block}))
    return str(path)


def _study(work: Path, name: str) -> optuna.Study:
    url = f"sqlite:///{work / 'trials' / 'autofuse.db'}"
    return optuna.load_study(study_name=name, storage=url)


def test_stage_one_tunes_its_encoders_while_its_share_has_time(demo_dataset, tmp_path):
    space = _space(
        tmp_path,
        "tuned",
        tune=2,
        budget={"unimodal": 0.6, "fusion": 0.25, "finalists": 0.15},
        finalists=1,
        seeds=1,
    )
    res = search(
        demo_dataset,
        study="tune",
        space=space,
        workdir=tmp_path / "w",
        time_budget="45s",
        trials=3,
        progress=False,
        mlflow_uri="off",
        report=False,
    )
    st = _study(tmp_path / "w", "tune")
    stage1 = [t for t in st.trials if stage_of(t) == UNIMODAL]
    tuned = [t for t in stage1 if TUNED in t.user_attrs]
    assert tuned, "no tuning run in 27 s of stage-1 time"
    by_label: dict[str, list] = {}
    for t in stage1:
        by_label.setdefault(t.user_attrs["unimodal_label"], []).append(t)
    assert all(len(ts) <= 3 for ts in by_label.values())  # stages.tune: 2 more runs at most
    for t in tuned:  # a tuning run trains what it proposed, with its own cache key
        spec = t.user_attrs["spec"]
        assert spec["training"]["lr"] == t.user_attrs[TUNED]["lr"]
        (first,) = [
            f for f in by_label[t.user_attrs["unimodal_label"]] if TUNED not in f.user_attrs
        ]
        assert t.user_attrs["unimodal"]["source"] != first.user_attrs["unimodal"]["source"]
    ended = st.user_attrs["unimodal_tuning"]
    assert ended["rounds"] >= 1 and ended["ended"]
    # stage 2 fuses each choice's best stage-1 run
    choices, _ = fusion_choices(st)
    for label, ts in by_label.items():
        m, enc_label = label.split(":", 1)
        done = [t for t in ts if t.state == optuna.trial.TrialState.COMPLETE]
        best = max(done, key=lambda t: (t.value, -t.number))
        assert choices[m][enc_label].source == best.user_attrs["unimodal"]["source"]
    fusion = [t for t in st.trials if stage_of(t) == FUSION and t.state.is_finished()]
    assert fusion and res.summary["stages"][UNIMODAL]["trials"] == len(stage1)


def test_a_stage_three_that_cannot_fit_an_epoch_is_skipped_and_says_so(demo_dataset, tmp_path):
    # stage 3's share is 0: stage 2 runs to the end of the budget, no time is left for it
    space = _space(tmp_path, "nofin", budget={"unimodal": 0.4, "fusion": 0.6, "finalists": 0.0})
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    argv = [sys.executable, "-m", "autofuse.cli", "search", str(demo_dataset), "--study", "nofin"]
    argv += ["--space", space, "--time-budget", "20s", "--workdir", str(tmp_path / "w")]
    out = subprocess.run(argv + ["--mlflow-uri", "off"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "stage 3 skipped" in out.stdout and "Traceback" not in out.stderr
    summary = json.loads((tmp_path / "w" / "trials" / "nofin" / "summary.json").read_text())
    assert "stage 3 skipped" in summary["stage3_skipped"]
    plan = summary["stages"][FINALIST]["plan"]
    assert plan["skipped"] and plan["designs"] == 0
    st = _study(tmp_path / "w", "nofin")
    assert not [t for t in st.trials if stage_of(t) == FINALIST]
    # the best stage-2 design is the result, exported
    assert summary["best_trial"] is not None and summary["best_dir"]
    report = (tmp_path / "w" / "reports" / "nofin" / "report.md").read_text()
    assert "stage 3 skipped" in report


@pytest.mark.parametrize("folds", [5, 1])
def test_finalist_seeds_train_differently(demo_dataset, tmp_path, folds):
    """A finalist of a cross-validated design starts from the stage-1 encoders with new fusion
    layers: each seed initialises them, orders the rows and drops out its own way. A single-split
    design's finalists start from its stage-2 weights, and each returns its best fine-tuned
    epoch (never the start itself, which would make every seed the same model)."""
    space = _space(tmp_path, "seeds", finalists=1, seeds=2, folds=folds)
    search(
        demo_dataset,
        study="seeds",
        space=space,
        workdir=tmp_path / "w",
        trials=3,
        progress=False,
        mlflow_uri="off",
        report=False,
    )
    st = _study(tmp_path / "w", "seeds")
    fin = [t for t in st.trials if stage_of(t) == FINALIST]
    by_design: dict[int, list] = {}
    for t in fin:
        # CV-ranked: fold 1's model saw the validation rows, so never a finalist's start
        assert ("init_from" in t.user_attrs) == (folds == 1)
        by_design.setdefault(t.user_attrs["finalist_of"], []).append(t)
    for ts in by_design.values():
        assert len(ts) == 2
        assert all(t.user_attrs["best_epoch"] >= 1 for t in ts)
        losses = [tuple(h["train_loss"] for h in t.user_attrs["history"]) for t in ts]
        assert losses[0] != losses[1], "two seeds trained bit-identically"
    # without a budget the first round was the stage
    assert st.user_attrs["finalist_plan"]["ended"] == "every finalist asked for has run"
    if folds == 1:
        return
    # with time left over, a later round adds the next design; with none, it says so
    plan = st.user_attrs["finalist_plan"]
    rows = {"train": 100, "fusion_rows": 0.4}
    sp = load_space(space)
    st.set_user_attr("finalist_plan", {k: v for k, v in plan.items() if k != "ended"})
    if len(plan["order"]) == plan["first"]:
        return  # no design beyond the first round's
    assert enqueue_finalists(st, sp, 0.001, rows) == 0
    assert "no further finalist fits" in st.user_attrs["finalist_plan"]["ended"]
    assert enqueue_finalists(st, sp, 1e6, rows) > 0
    extra = plan["order"][plan["first"] :]
    queued = [t for t in st.trials if stage_of(t) == FINALIST and t.state.name == "WAITING"]
    assert {t.user_attrs["finalist_of"] for t in queued} == set(extra)
    assert st.user_attrs["finalist_plan"]["rounds"] == 2


def test_stages_ensemble_false_turns_the_ensemble_off(demo_dataset, tmp_path):
    """``stages.ensemble: false`` was declared and documented but never read."""
    space = _space(tmp_path, "noens", finalists=2, seeds=1, ensemble=False)
    res = search(
        demo_dataset,
        study="noens",
        space=space,
        workdir=tmp_path / "w",
        trials=3,
        progress=False,
        mlflow_uri="off",
        report=False,
    )
    w = res.summary["winner"]
    assert w["kind"] == "single" and len(w["trials"]) == 1
    assert "no ensemble (stages.ensemble: false)" in w["why"]
    assert "greedy ensemble" not in w["why"]
