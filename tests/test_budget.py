"""The budget arithmetic of a staged search (autofuse/budget.py) and stage 1's tuning proposals
(autofuse/tuning.py), on numbers alone: stage ends with rollover, stage 3 sized from measured
costs (or skipped), TPE proposals inside the space and replayed from history."""

from __future__ import annotations

import pytest

from autofuse.budget import (
    COST_MARGIN,
    MIN_FINALIST_EPOCHS,
    FinalistCost,
    StageBudget,
    size_finalists,
)
from autofuse.space import load_space
from autofuse.spec import ArchitectureSpec
from autofuse.tuning import converged, defaults_of, propose, tuned_spec, tuning_values

SHARES = [("unimodal", 0.25), ("fusion", 0.55), ("finalist", 0.20)]


def test_each_stage_ends_at_its_point_of_the_search_clock():
    b = StageBudget(100.0, SHARES, start=1000.0)
    assert b.end("unimodal") == pytest.approx(1025.0)
    assert b.end("fusion") == pytest.approx(1080.0)
    assert b.end("finalist") == pytest.approx(1100.0)


def test_time_a_stage_leaves_unused_passes_to_the_next():
    b = StageBudget(100.0, SHARES, start=1000.0)
    # stage 1 ended after 10 s instead of 25: stage 2 gets 70 s, not its 55
    assert b.left("fusion", now=1010.0) == pytest.approx(70.0)
    # stage 2 ended at 1090 (it overran): stage 3 gets the 10 s left, the total is kept
    assert b.left("finalist", now=1090.0) == pytest.approx(10.0)
    assert b.left("finalist", now=1200.0) == 0.0


def test_shares_are_normalised_and_no_budget_means_no_ends():
    b = StageBudget(60.0, [("unimodal", 1), ("fusion", 1), ("finalist", 2)], start=0.0)
    assert [b.end(s) for s, _ in SHARES] == pytest.approx([15.0, 30.0, 60.0])
    none = StageBudget(None, SHARES)
    assert none.end("fusion") is None and none.left("fusion") is None
    assert none.shared("unimodal", 3) == {}


def _trial_s(c: FinalistCost, epochs: int) -> float:
    return c.overhead_s + epochs * c.epoch_s * COST_MARGIN


def test_stage_three_keeps_what_fits_two_epochs_per_trial():
    costs = [FinalistCost(10.0, 2.0), FinalistCost(20.0, 2.0), FinalistCost(40.0, 2.0)]
    two = [_trial_s(c, MIN_FINALIST_EPOCHS) for c in costs]  # 27, 52, 102 s per trial
    # everything fits: 3 designs x 3 seeds
    plan = size_finalists(costs, 3, 3 * sum(two))
    assert (plan.designs, plan.seeds) == (3, 3) and not plan.skipped
    # 3 designs x 2 seeds fit, x 3 do not: more designs beat more seeds
    plan = size_finalists(costs, 3, 2 * sum(two) + 1)
    assert (plan.designs, plan.seeds) == (3, 2)
    # only the two cheaper designs fit with 2 seeds
    plan = size_finalists(costs, 3, 2 * (two[0] + two[1]) + 1)
    assert (plan.designs, plan.seeds) == (2, 2)
    # one design, one seed, two epochs
    plan = size_finalists(costs, 3, two[0] + 1)
    assert (plan.designs, plan.seeds) == (1, 1) and "2 epoch" in plan.note
    # one epoch only
    plan = size_finalists(costs, 3, _trial_s(costs[0], 1) + 0.5)
    assert (plan.designs, plan.seeds) == (1, 1) and "1 epoch" in plan.note


def test_stage_three_is_skipped_when_one_epoch_does_not_fit():
    plan = size_finalists([FinalistCost(10.0, 2.0)], 3, 5.0)
    assert plan.skipped and plan.designs == 0
    assert "skipped" in plan.note and "5 s" in plan.note
    assert size_finalists([], 3, 100.0).skipped  # nothing to fine-tune
    # without a budget every design runs with every seed
    plan = size_finalists([FinalistCost(1e6)] * 2, 3, None)
    assert (plan.designs, plan.seeds) == (2, 3)


def _stage1_spec(space) -> ArchitectureSpec:
    from autofuse.space import unimodal_specs

    ((_, spec),) = [s for s in unimodal_specs(space, {"tab": "tabular"})]
    return spec


def test_tuning_proposes_inside_the_space_and_learns_from_history():
    space = load_space("demo")  # tabular.mlp: dim [32, 64]; lr 0.001..0.005 (log)
    spec = _stage1_spec(space)
    values = tuning_values(space, spec, "tabular")
    # the learning rate, the width and the encoder's other searchable settings (its registry's)
    assert {"lr", "enc.dim"} <= set(values)
    assert all(k == "lr" or k.startswith("enc.") for k in values)
    lr = space.training.lr
    rest = {k: v for k, v in defaults_of(values).items() if k not in ("lr", "enc.dim")}
    # history: high learning rates and dim 64 won
    history = [
        ({"lr": 0.0011, "enc.dim": 32, **rest}, 0.50),
        ({"lr": 0.0012, "enc.dim": 32, **rest}, 0.52),
        ({"lr": 0.0045, "enc.dim": 64, **rest}, 0.90),
        ({"lr": 0.0048, "enc.dim": 64, **rest}, 0.91),
        ({"lr": 0.0013, "enc.dim": 32, **rest}, 0.51),
        ({"lr": 0.0046, "enc.dim": 64, **rest}, 0.89),
    ]
    props = [propose(history, values, "maximize", seed=s) for s in range(8)]
    for p in props:
        assert lr.low <= p["lr"] <= lr.high and p["enc.dim"] in (32, 64)
    # TPE after its startup trials: most proposals near the good region
    assert sum(p["enc.dim"] == 64 for p in props) >= 5
    assert propose(history, values, "maximize", 3) == propose(history, values, "maximize", 3)
    new = tuned_spec(spec, {"lr": 0.002, "enc.dim": 64})
    (enc,) = new.encoders.values()
    assert enc.dim == 64 and new.training.lr == 0.002
    assert new.training.epochs == space.stages.unimodal_epochs  # trained to early stopping


def test_a_choice_converges_after_runs_without_gain():
    assert not converged([0.5, 0.6, 0.6], 1.0)  # too few runs to say
    assert converged([0.5, 0.7, 0.6, 0.7, 0.65], -1.0)  # maximise: 3 runs did not beat 0.7
    assert not converged([0.5, 0.7, 0.6, 0.71, 0.65], -1.0)
    assert converged([0.5, 0.3, 0.4, 0.3, 0.35], 1.0)  # minimise


def test_a_feature_extraction_that_cannot_fit_stops_before_it_is_paid(
    demo_dataset, tmp_path, monkeypatch
):
    """A frozen encoder's one-off extraction is projected from its first rows; past the trial's
    deadline it stops there (nothing cached) and the trial ends as a timeout that says why."""
    import time

    import torch

    from autofuse.data import Dataset
    from autofuse.encoders import EncoderSpec, cache
    from autofuse.runner import CandidateRunner
    from autofuse.spec import FusionSpec, HeadSpec, TrainingSpec
    from autofuse.train import TrialFault

    monkeypatch.setattr(cache, "PROJECT_AFTER_S", 0.0)  # project after 2 batches, however fast
    ds = Dataset.load(demo_dataset)
    spec = ArchitectureSpec(
        encoders={"text": EncoderSpec(name="text.sentence_transformer", mode="frozen")},
        fusion=FusionSpec(family="encoder_decoder", method="decision", point="late"),
        head=HeadSpec(fused_dim=16),
        training=TrainingSpec(epochs=1),
    )
    runner = CandidateRunner(ds, tmp_path / "cache", torch.device("cpu"))
    runner.feature_cache.batch_size = 8
    with pytest.raises(TrialFault) as err:
        runner.run(spec, deadline=time.monotonic() + 0.05)
    assert err.value.reason == "timeout"
    msg = str(err.value)
    assert "feature extraction of text / text.sentence_transformer" in msg and "skipped" in msg
    assert not list((tmp_path / "cache").rglob("features.safetensors"))  # nothing stored
    # with time enough it is computed and cached, as before
    res = runner.run(spec, deadline=time.monotonic() + 600)
    assert res.epochs_run == 1
    assert list((tmp_path / "cache").rglob("features.safetensors"))
