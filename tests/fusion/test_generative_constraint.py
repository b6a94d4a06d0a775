"""Generative (mvae, translation) and constraint (coordinated, tensor, low_rank_tensor) fusions:
non-default hyperparameter branches, aux losses that train, imputation, absent modalities."""

import pytest
import torch

from autofuse.errors import ConfigError
from autofuse.fusion import FUSIONS, create_fusion
from autofuse.fusion.constraint import ALIGNMENTS, alignment_loss, tensor_dims
from autofuse.testing.fusion_contract import fake_features, fake_shapes
from autofuse.types import FeatureShape, ModalityFeatures

MINE = [
    "generative.mvae",
    "generative.translation",
    "constraint.coordinated",
    "constraint.tensor",
    "constraint.low_rank_tensor",
]

BRANCHES = [
    ("generative.mvae", {"subsample": False}),
    ("generative.mvae", {"z_input": "sample_and_mean", "latent": 16, "beta": 1.0}),
    ("generative.translation", {"cycle": True}),
    ("generative.translation", {"source": 1, "cycle": True}),
    ("generative.translation", {"source": 99}),  # clamped to the last modality
    *[("constraint.coordinated", {"alignment": a}) for a in ALIGNMENTS],
    ("constraint.coordinated", {"alignment": "infonce", "combine": "mean", "temperature": 0.5}),
    ("constraint.tensor", {"rank_dim": 16}),
    ("constraint.tensor", {"rank_dim": 4, "hidden": 32}),
    ("constraint.low_rank_tensor", {"rank": 2}),
    ("constraint.low_rank_tensor", {"rank": 8, "hidden": 16}),
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster and does not thrash a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _with_absent(feats, m, rows):
    """Copy of ``feats`` with modality ``m`` absent (zeros, present False) on ``rows``."""
    out = dict(feats)
    f = feats[m]
    keep = torch.ones(f.present.shape[0])
    keep[rows] = 0.0
    out[m] = ModalityFeatures(
        f.pooled * keep[:, None],
        f.tokens * keep[:, None, None],
        [x * keep[:, None, None] for x in f.levels],
        f.present & keep.bool(),
        f.token_mask,
    )
    return out


def test_registered_with_points_space_and_caps():
    for name in MINE:
        meta = FUSIONS.get(name).meta
        assert set(meta["points"]) == {"early", "mid", "late", "hybrid"}, name
        assert meta["space"], name
    assert FUSIONS.get("constraint.tensor").meta["max_modalities"] == 6
    assert FUSIONS.get("generative.mvae").meta["max_modalities"] is None


@pytest.mark.parametrize(
    "name,hp",
    BRANCHES,
    ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in h.items())}" for n, h in BRANCHES],
)
@pytest.mark.parametrize("n_mod", [2, 4])
def test_non_default_branches(name, hp, n_mod):
    torch.manual_seed(0)
    shapes = fake_shapes(n_mod)
    fusion = create_fusion(name, shapes, 6, "hybrid", **hp).train()
    out = fusion(_with_absent(fake_features(shapes), "m0", [0, 2]))
    assert out.z.shape == (5, 6) and torch.isfinite(out.z).all()
    assert out.aux_loss.dim() == 0 and torch.isfinite(out.aux_loss)
    out = fusion(fake_features(shapes))  # all present: every parameter must get a gradient
    (out.z.pow(2).mean() + out.aux_loss).backward()
    for pname, p in fusion.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {pname}"
    with torch.no_grad():
        z_eval = fusion.eval()(fake_features(shapes)).z
    assert torch.isfinite(z_eval).all()


@pytest.mark.parametrize("name", MINE)
@pytest.mark.parametrize("case", ["modality_absent_in_batch", "all_absent_rows", "batch_of_one"])
def test_absent_modality_whole_batch(name, case):
    torch.manual_seed(0)
    shapes = fake_shapes(3)
    hps = [{"alignment": a} for a in ALIGNMENTS] if name == "constraint.coordinated" else [{}]
    hps += [{"cycle": True}, {"source": 2}] if name == "generative.translation" else []
    for hp in hps:
        fusion = create_fusion(name, shapes, 6, "late", **hp).train()
        batch = 1 if case == "batch_of_one" else 5
        feats = fake_features(shapes, batch=batch)
        if case == "modality_absent_in_batch":
            feats = _with_absent(feats, "m1", list(range(batch)))
        elif case == "all_absent_rows":  # rows 1 and 3 have no modality at all
            for m in shapes:
                feats = _with_absent(feats, m, [1, 3])
        out = fusion(feats)
        assert out.z.shape == (batch, 6) and torch.isfinite(out.z).all(), hp
        assert torch.isfinite(out.aux_loss), hp
        (out.z.sum() + out.aux_loss).backward()
        for pname, p in fusion.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), (
                f"{hp}: non-finite gradient for {pname}"
            )


def test_every_modality_absent_everywhere():
    shapes = fake_shapes(2)
    feats = fake_features(shapes)
    for m in shapes:
        feats = _with_absent(feats, m, list(range(5)))
    for name in MINE:
        out = create_fusion(name, shapes, 6, "mid").train()(feats)
        assert torch.isfinite(out.z).all() and torch.isfinite(out.aux_loss), name
        assert out.aux_loss.item() == 0.0, (
            name
        )  # nothing to reconstruct / align; mvae: posterior = prior


def test_alignment_needs_two_rows_for_batch_losses():
    a, b = torch.randn(1, 8, requires_grad=True), torch.randn(1, 8)
    for kind in ("cca", "infonce"):
        loss, ok = alignment_loss(a, b, torch.ones(1, dtype=torch.bool), kind)
        assert loss.item() == 0.0 and ok.item() == 0.0
        loss.backward()  # zero-gradient-safe
    loss, ok = alignment_loss(a, b, torch.zeros(1, dtype=torch.bool), "cosine")
    assert loss.item() == 0.0 and ok.item() == 0.0
    with pytest.raises(ValueError):
        alignment_loss(a, b, torch.ones(1, dtype=torch.bool), "nope")


def _optimise_aux(fusion, feats, steps):
    opt = torch.optim.Adam(fusion.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        fusion(feats).aux_loss.backward()
        opt.step()


@pytest.mark.parametrize(
    "name,hp",
    [
        *[("constraint.coordinated", {"alignment": a, "dropout": 0.0}) for a in ALIGNMENTS],
        ("generative.mvae", {"dropout": 0.0}),
        ("generative.translation", {"dropout": 0.0, "cycle": True}),
    ],
)
def test_aux_loss_decreases(name, hp):
    torch.manual_seed(0)
    shapes = fake_shapes(3)
    feats = _with_absent(fake_features(shapes, batch=16), "m2", [0, 5])
    fusion = create_fusion(name, shapes, 6, "late", **hp).train()
    fusion(feats)  # running statistics of the reconstruction targets settle on this batch
    with torch.no_grad():
        before = fusion.eval()(feats).aux_loss.item()
    _optimise_aux(fusion.train(), feats, 25)
    with torch.no_grad():
        after = fusion.eval()(feats).aux_loss.item()
    assert after < 0.8 * before, (before, after)


def _correlated(n, dims, seed):
    """Modalities that are noisy linear views of one shared 4-d factor."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, 4, generator=g)
    mats = torch.Generator().manual_seed(123)
    feats = {}
    for i, d in enumerate(dims):
        a = torch.randn(4, d, generator=mats)
        x = s @ a + 0.1 * torch.randn(n, d, generator=g) + 0.5 * (i + 1)  # non-zero mean too
        feats[f"m{i}"] = ModalityFeatures(
            pooled=x, tokens=x.unsqueeze(1), levels=[], present=torch.ones(n, dtype=torch.bool)
        )
    return feats


def test_mvae_imputes_missing_modality_better_than_zeros():
    torch.manual_seed(0)
    dims = [12, 10, 8]
    shapes = {f"m{i}": FeatureShape(dim=d, n_tokens=1) for i, d in enumerate(dims)}
    fusion = create_fusion(
        "generative.mvae", shapes, 4, "late", latent=8, hidden=64, beta=0.01, dropout=0.0
    )
    opt = torch.optim.Adam(fusion.parameters(), lr=1e-2)
    for step in range(40):
        opt.zero_grad()
        fusion(_correlated(32, dims, seed=step)).aux_loss.backward()
        opt.step()

    test = _correlated(64, dims, seed=10_000)
    truth = test["m1"].pooled.clone()
    rows = list(range(0, 64, 2))
    imputed = fusion.impute(_with_absent(test, "m1", rows))
    assert set(imputed) == {"m1"} and imputed["m1"].shape == truth.shape
    assert torch.equal(imputed["m1"][1::2], truth[1::2])  # present rows are kept
    err = (imputed["m1"][rows] - truth[rows]).pow(2).mean()
    err_zeros = truth[rows].pow(2).mean()
    err_mean = (truth[rows] - truth.mean(0)).pow(2).mean()
    assert err < 0.5 * err_zeros and err < 0.5 * err_mean, (err, err_zeros, err_mean)
    assert fusion.impute(test) == {}  # nothing absent, nothing to impute
    assert fusion.training  # impute restores the mode


def test_mvae_product_of_experts_uses_only_present():
    from autofuse.fusion.generative import MVAEFusion

    mu = torch.tensor([[[2.0], [100.0]]])  # [B=1, M=2, L=1]
    logvar = torch.zeros(1, 2, 1)
    use = torch.tensor([[True, False]])
    mu_j, logvar_j = MVAEFusion.product_of_experts(mu, logvar, use)
    assert torch.allclose(mu_j, torch.tensor([[1.0]]))  # prior N(0,1) x expert N(2,1) -> N(1, 1/2)
    assert torch.allclose(logvar_j.exp(), torch.tensor([[0.5]]))
    mu_0, logvar_0 = MVAEFusion.product_of_experts(mu, logvar, torch.zeros(1, 2, dtype=torch.bool))
    assert mu_0.item() == 0.0 and logvar_0.item() == 0.0  # prior only


def test_translation_source_choice_and_absent_source():
    shapes = fake_shapes(3)
    f = create_fusion("generative.translation", shapes, 6, "late", source=1)
    assert f.source == "m1" and f.targets == ["m0", "m2"]
    assert create_fusion("generative.translation", shapes, 6, "late", source=-3).source == "m0"
    f.eval()
    feats = _with_absent(fake_features(shapes), "m1", [0, 2])
    with torch.no_grad():
        z = f(feats).z
    assert torch.allclose(z[0], f.proj.bias) and torch.allclose(
        z[2], f.proj.bias
    )  # zero bottleneck


def test_tensor_dims_and_cap():
    assert [tensor_dims(n, 16) for n in (2, 3, 4, 5, 6)] == [16, 16, 10, 5, 4]
    assert tensor_dims(2, 8) == 8
    for n in (2, 3, 4, 5, 6):
        assert (tensor_dims(n, 64) + 1) ** n <= 2**14
    with pytest.raises(ConfigError):
        create_fusion("constraint.tensor", fake_shapes(7), 6, "late")
    assert create_fusion("constraint.low_rank_tensor", fake_shapes(7), 6, "late") is not None


def test_tensor_fusion_ignores_absent_modality_terms():
    """An absent modality contributes [0..0, 1]: z equals that of zero projections for it."""
    torch.manual_seed(0)
    shapes = fake_shapes(2)
    f = create_fusion("constraint.tensor", shapes, 6, "late", rank_dim=4).eval()
    feats = _with_absent(fake_features(shapes), "m0", [0])
    other = dict(feats)
    other["m0"] = ModalityFeatures(
        feats["m0"].pooled + torch.randn(5, 16),
        feats["m0"].tokens,
        feats["m0"].levels,
        feats["m0"].present,
        feats["m0"].token_mask,
    )
    with torch.no_grad():
        a, b = f(feats).z, f(other).z
    assert torch.allclose(a[0], b[0]) and not torch.allclose(a[1], b[1])
