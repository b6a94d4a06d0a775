"""Every fusion method trains end to end on real (demo) data; mvae copes with a missing modality;
a search over all families records per-family results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from autofuse.data import Dataset
from autofuse.encoders import EncoderSpec
from autofuse.fusion import FUSIONS
from autofuse.paths import Paths
from autofuse.runner import CandidateRunner
from autofuse.spec import ArchitectureSpec, FusionSpec, HeadSpec, TrainingSpec
from autofuse.study import search
from autofuse.train import ablate, evaluate

TINY_ALL = str(Path(__file__).parent / "spaces" / "tiny_all.yaml")


@pytest.fixture(scope="module")
def runner(demo_dataset, tmp_path_factory):
    ds = Dataset.load(demo_dataset)
    return CandidateRunner(
        ds, Paths.resolve(tmp_path_factory.mktemp("w")).cache, torch.device("cpu")
    )


def _spec(family, method, point="late", epochs=1, modality_dropout=0.0, **params):
    return ArchitectureSpec(
        encoders={
            "image": EncoderSpec(
                name="image.small_cnn",
                mode="scratch",
                dim=16,
                params={"image_size": 32, "depth": 3},
            ),
            "text": EncoderSpec(name="text.sentence_transformer", mode="frozen"),
            "tabular": EncoderSpec(name="tabular.mlp", mode="scratch", dim=16),
        },
        fusion=FusionSpec(family=family, method=method, point=point, params=params),
        head=HeadSpec(fused_dim=32),
        training=TrainingSpec(
            lr=3e-3,
            epochs=epochs,
            patience=epochs,
            batch_size=32,
            modality_dropout=modality_dropout,
            aux_weight=0.1,
            seed=0,
        ),
    )


@pytest.mark.parametrize("name", FUSIONS.names())
def test_every_method_trains_on_real_data(runner, name):
    e = FUSIONS.get(name)
    point = "hybrid" if "hybrid" in e.meta["points"] else e.meta["points"][0]
    out = runner.run(_spec(e.meta["family"], e.meta["method"], point))
    assert np.isfinite(out.history[0]["train_loss"])
    assert 0.0 <= out.val_metrics["accuracy"] <= 1.0
    assert out.n_params > 0


def test_mvae_predicts_above_chance_with_a_modality_dropped(tmp_path):
    """Two noisy views of the same 3-class signal: with one view removed at test time the
    product-of-experts latent comes from the other view alone, and predictions stay well above
    chance."""
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 600
    y = rng.integers(0, 3, n)
    centres = np.array([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    a = centres[y] + rng.normal(0, 0.8, (n, 2))
    b = centres[y] @ np.array([[0.0, 1.0], [-1.0, 0.0]]) + rng.normal(0, 0.8, (n, 2))
    df = pd.DataFrame(
        {"a1": a[:, 0], "a2": a[:, 1], "b1": b[:, 0], "b2": b[:, 1], "label": [f"c{k}" for k in y]}
    )
    ds = Dataset.from_dataframe(
        df,
        target="label",
        root=tmp_path,
        modalities={
            "view_a": {"type": "tabular", "columns": ["a1", "a2"]},
            "view_b": {"type": "tabular", "columns": ["b1", "b2"]},
        },
    )
    runner = CandidateRunner(ds, Paths.resolve(tmp_path).cache, torch.device("cpu"))
    spec = ArchitectureSpec(
        encoders={
            m: EncoderSpec(name="tabular.mlp", mode="scratch", dim=16) for m in ("view_a", "view_b")
        },
        fusion=FusionSpec(family="generative", method="mvae", point="late", params={"latent": 16}),
        head=HeadSpec(fused_dim=32),
        training=TrainingSpec(
            lr=3e-3,
            epochs=15,
            patience=15,
            batch_size=32,
            modality_dropout=0.3,
            aux_weight=0.1,
            seed=0,
        ),
    )
    out = runner.run(spec)
    data = out.data
    y_test = data.y_raw[data.splits["test"]]
    chance = np.bincount(y_test).max() / len(y_test)  # majority-class rate
    full = out.test_metrics["accuracy"]
    dropped = {
        m: evaluate(out.model, ablate(data, m, "remove"), "test", runner.device)["accuracy"]
        for m in ("view_a", "view_b")
    }
    print(
        f"mvae test accuracy: both views {full:.3f}, one view dropped {dropped}, majority {chance:.3f}"
    )
    for m, acc in dropped.items():
        assert acc > chance + 0.3, (m, acc, chance)


@pytest.mark.slow
def test_search_over_all_families_reports_per_family_best(demo_dataset, tmp_path):
    res = search(
        demo_dataset,
        study="fam",
        trials=12,
        space=TINY_ALL,
        workdir=tmp_path,
        progress=False,
        sampler="random",
        seed=3,
    )
    s = json.loads((tmp_path / "trials" / "fam" / "summary.json").read_text())
    assert s["trials"]["failed"] == 0
    assert set(s["baselines"]) == {
        "late_fusion",
        "early_concat",
        "tensor_fusion",
        "low_rank_tensor",
        "cross_attention",
    }
    assert {"encoder_decoder", "attention", "constraint"} <= set(s["per_family_best"])
    assert len(s["per_family_best"]) >= 4
    assert res.summary["best_trial"] is not None
