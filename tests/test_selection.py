"""Stage 2 ranks designs by K-fold cross-validation (issue 19): the trial's value is the mean over
folds (a selection estimate) with the per-fold scores in its record, the folds cover the rows the
fusion heads may learn from (never a test row), out-of-fold outputs are kept for the top designs,
pruning works fold by fold, a study resumes with folds, and ``stages.folds: 1`` is the
single-split selection of before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from autofuse.checkpoints import CheckpointStore
from autofuse.data import Dataset
from autofuse.metrics import compute_metrics, proper_loss
from autofuse.stages import FUSION, stage_of
from autofuse.storage.history import HistoryStore
from autofuse.study import search

STAGED = Path(__file__).parent / "spaces" / "staged.yaml"


def _space(tmp: Path, folds: int, finalists: int = 0) -> str:
    """staged.yaml with ``folds`` and ``finalists`` set (``extends`` replaces whole keys)."""
    block = yaml.safe_load(STAGED.read_text())["stages"] | {"folds": folds, "finalists": finalists}
    p = tmp / f"folds{folds}.yaml"
    p.write_text(yaml.safe_dump({"extends": str(STAGED), "stages": block}))
    return str(p)


def _fusion(work: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    url = f"sqlite:///{work / 'trials' / 'autofuse.db'}"
    trials = optuna.load_study(study_name=study, storage=url).trials
    return [t for t in trials if stage_of(t) == FUSION]


@pytest.fixture(scope="module")
def cv_study(demo_dataset, tmp_path_factory):
    work = tmp_path_factory.mktemp("cv")
    space = _space(work, folds=3, finalists=1)
    search(
        demo_dataset,
        study="cv",
        space=space,
        trials=4,
        workdir=work,
        progress=False,
        mlflow_uri="off",
        report=False,
    )
    return work, space


def test_a_fusion_trial_is_ranked_by_the_mean_over_folds(cv_study):
    work, _ = cv_study
    done = [t for t in _fusion(work, "cv") if t.state.name == "COMPLETE"]
    assert len(done) == 4
    for t in done:
        sel = t.user_attrs["selection"]
        assert sel["kind"] == "cv" and sel["folds"] == 3 and len(sel["scores"]) == 3
        assert t.value == pytest.approx(np.mean(sel["scores"]))
        assert sel["mean"] == pytest.approx(t.value)
        assert len(sel["loss"]) == 3 and all(np.isfinite(sel["loss"]))
        assert t.user_attrs["val_metrics"]["accuracy"] == pytest.approx(t.value)
    # the SQL record keeps the per-fold values too
    recs = {
        r.number: r for r in HistoryStore(f"sqlite:///{work / 'trials/autofuse.db'}").trials("cv")
    }
    assert all(
        recs[t.number].selection["scores"] == t.user_attrs["selection"]["scores"] for t in done
    )


def test_a_time_budget_still_runs_every_fold(demo_dataset, tmp_path):
    """The fold loop compares the trial's deadline on the clock it was set on (a deadline of
    ``time.monotonic()`` read against ``time.time()`` ended every trial after fold 1)."""
    search(
        demo_dataset,
        study="budget",
        space=_space(tmp_path, folds=3),
        trials=3,
        time_budget="3m",
        workdir=tmp_path,
        progress=False,
        mlflow_uri="off",
        report=False,
    )
    done = [t for t in _fusion(tmp_path, "budget") if t.state.name == "COMPLETE"]
    assert len(done) == 3
    for t in done:
        assert t.user_attrs["selection"]["folds_done"] == 3, t.user_attrs["selection"]
        assert not t.user_attrs.get("low_fidelity")


def test_out_of_fold_outputs_cover_the_pool_and_no_test_row(cv_study, demo_dataset):
    work, _ = cv_study
    ds = Dataset.load(demo_dataset)
    store = CheckpointStore(work / "trials" / "cv")
    kept = [
        t for t in _fusion(work, "cv") if t.state.name == "COMPLETE" and store.has_outputs(t.number)
    ]
    assert kept, "the top designs keep their out-of-fold outputs"
    test, val = set(ds.indices("test")), set(ds.indices("val"))
    for t in kept:
        out = store.load_outputs(t.number)
        rows = out["oof_rows"]
        assert not test & set(rows.tolist())
        assert val <= set(rows.tolist())  # the validation rows are in the folds
        assert len(out["oof"]) == len(rows) and len(out["test"]) == len(test)
        # the recorded folds' scores are those of the out-of-fold outputs
        y = np.asarray(ds.y)[rows]
        acc = compute_metrics("classification", y, out["oof"])["accuracy"]
        assert min(t.user_attrs["selection"]["scores"]) - 1e-9 <= acc
        assert acc <= max(t.user_attrs["selection"]["scores"]) + 1e-9
        assert np.isfinite(proper_loss("classification", y, out["oof"]))


def test_a_study_with_folds_resumes(cv_study, demo_dataset):
    work, space = cv_study
    search(
        demo_dataset,
        study="cv",
        space=space,
        trials=6,
        workdir=work,
        progress=False,
        mlflow_uri="off",
        report=False,
    )
    done = [t for t in _fusion(work, "cv") if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == 4  # stage 3 ran before: the fusion search is not reopened
    # a new study in the same folder reuses stage 1 and cross-validates too
    search(
        demo_dataset,
        study="cv2",
        space=_space(work, folds=3),
        trials=2,
        workdir=work,
        progress=False,
        mlflow_uri="off",
        report=False,
    )
    assert all(t.user_attrs["selection"]["folds"] == 3 for t in _fusion(work, "cv2"))


def test_one_fold_is_the_single_split_selection(demo_dataset, tmp_path):
    search(
        demo_dataset,
        study="one",
        space=_space(tmp_path, folds=1),
        trials=2,
        workdir=tmp_path,
        progress=False,
        mlflow_uri="off",
        report=False,
    )
    done = [t for t in _fusion(tmp_path, "one") if t.state.name == "COMPLETE"]
    assert len(done) == 2
    for t in done:
        assert "selection" not in t.user_attrs
        # the value is the validation split's metric at the best epoch, as before
        best = t.user_attrs["history"][t.user_attrs["best_epoch"] - 1]
        assert t.value == pytest.approx(best["accuracy"])


def test_ensemble_weights_never_see_the_outputs_they_are_scored_on():
    """Member 0 memorised the validation rows (perfect there, chance elsewhere); member 1 is a
    fair model. Chosen in-sample on the validation outputs, the greedy ensemble is member 0
    alone; weighted on out-of-fold outputs of other rows, it is member 1, and its score on the
    validation rows is what member 1 really does there."""
    from autofuse.ensemble import greedy_selection
    from autofuse.winner import select_ensemble

    rng = np.random.default_rng(0)
    n_fit, n_val, c = 400, 60, 3
    y_fit, y_val = rng.integers(0, c, n_fit), rng.integers(0, c, n_val)

    def fair(y: np.ndarray) -> np.ndarray:  # right 70 % of the time
        guess = np.where(rng.random(len(y)) < 0.7, y, rng.integers(0, c, len(y)))
        return np.eye(c)[guess] * 4.0

    memorised_val = np.eye(c)[y_val] * 9.0
    chance_fit = rng.normal(size=(n_fit, c))
    fair_fit, fair_val = fair(y_fit), fair(y_val)
    in_sample, score_in = greedy_selection(
        [memorised_val, fair_val], y_val, "classification", "accuracy", "maximize"
    )
    assert in_sample[0] == 1.0 and score_in == 1.0  # the memoriser wins in-sample
    weights, score = select_ensemble(
        [chance_fit, fair_fit], y_fit, [memorised_val, fair_val], y_val,
        "classification", "accuracy", "maximize",
    )  # fmt: skip
    assert weights == [0.0, 1.0]
    assert score == pytest.approx((fair_val.argmax(1) == y_val).mean())


def test_the_winner_is_chosen_by_the_cross_validated_estimate(demo_dataset, tmp_path):
    """Two finalist designs: the winner is within one standard error of the best CV design and
    the smaller of those; an ensemble's figure is out-of-sample."""
    res = search(
        demo_dataset,
        study="win",
        space=_space(tmp_path, folds=3, finalists=2),
        trials=4,
        workdir=tmp_path,
        progress=False,
        mlflow_uri="off",
        report=False,
    )
    w = res.summary["winner"]
    url = f"sqlite:///{tmp_path / 'trials' / 'autofuse.db'}"
    trials = {t.number: t for t in optuna.load_study(study_name="win", storage=url).trials}
    designs = w["designs"]
    assert len(designs) == 2 and all("cv" in g for g in designs)
    for g in designs:  # the designs' CV estimates are their stage-2 selection estimates
        assert g["cv"]["mean"] == pytest.approx(trials[g["design"]].value)
    best = max(designs, key=lambda g: g["cv"]["mean"])
    bar = best["cv"]["mean"] - best["cv"]["std"] / np.sqrt(best["cv"]["folds"])
    close = [g for g in designs if g["cv"]["mean"] >= bar - 1e-12]
    assert w["design"] == min(close, key=lambda g: (g["n_params"], g["latency_ms"]))["design"]
    assert w["selection"]["mean"] == pytest.approx(trials[w["design"]].value)
    assert "cross-validated" in w["why"]
    assert w["val_kind"] == ("out-of-sample" if w["kind"] == "ensemble" else "validation")


@pytest.mark.slow
def test_two_workers_and_the_report_work_with_folds(demo_dataset, tmp_path):
    res = search(
        demo_dataset,
        study="w2",
        space=_space(tmp_path, folds=3, finalists=1),
        trials=4,
        workers=2,
        devices="cpu",
        workdir=tmp_path,
        progress=False,
        mlflow_uri="off",
    )
    fusion = _fusion(tmp_path, "w2")
    ended = [t for t in fusion if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(ended) == 4
    assert len({t.user_attrs.get("worker") for t in fusion}) == 2
    assert all(
        t.user_attrs["selection"]["folds"] == 3 for t in fusion if t.state.name == "COMPLETE"
    )
    md = Path(res.summary["report"]["markdown"]).read_text()
    assert "selection estimate (CV, 3 folds)" in md
    assert res.summary["selection"]["kind"] == "cv"


def test_the_honest_split_keeps_groups_whole():
    from autofuse.stages import split_train_rows

    rng = np.random.default_rng(1)
    train = np.arange(200)
    groups = np.repeat(np.arange(20), 10)[rng.permutation(200)]
    y = rng.integers(0, 3, 200)
    enc, fus = split_train_rows(train, y, "classification", 0.4, groups=groups)
    assert sorted(np.concatenate([enc, fus]).tolist()) == train.tolist()
    assert not set(groups[enc]) & set(groups[fus])
    assert 0.3 <= len(fus) / 200 <= 0.5
