"""Attention and graph fusion families: non-default branches, masking of absent modalities.

The shared contract (tests/fusion/test_contract.py) already runs every method with its default
hyperparameters over 2/3/6 modalities and every point; these tests cover the other branches.
"""

import itertools

import pytest
import torch

from autofuse.fusion import FUSIONS, create_fusion
from autofuse.fusion.attention import PAIRWISE_LIMIT, key_padding_mask
from autofuse.fusion.graph import cap_tokens, knn_adjacency
from autofuse.testing.fusion_contract import fake_features, fake_shapes
from autofuse.types import ModalityFeatures

METHODS = [
    "attention.intra_self",
    "attention.inter_cross",
    "attention.single_stream",
    "attention.multi_stream",
    "graph.modality_graph",
    "graph.token_graph",
]

# (method, n_modalities, point, non-default hyperparameters)
BRANCHES = [
    ("attention.intra_self", 3, "hybrid", {"d_model": 32, "heads": 4, "layers": 2, "dropout": 0.0}),
    ("attention.inter_cross", 3, "late", {"d_model": 32, "heads": 4, "layers": 2, "dropout": 0.0}),
    ("attention.inter_cross", PAIRWISE_LIMIT + 1, "mid", {"d_model": 32, "heads": 4}),
    ("attention.single_stream", 3, "hybrid", {"d_model": 32, "heads": 4, "layers": 2}),
    ("attention.multi_stream", 3, "early", {"d_model": 32, "heads": 4, "layers": 2}),
    ("graph.modality_graph", 3, "late", {"d_model": 32, "conv": "gat", "heads": 4, "layers": 1}),
    (
        "graph.modality_graph",
        3,
        "hybrid",
        {"d_model": 32, "conv": "gat", "heads": 1, "readout": "attention"},
    ),
    (
        "graph.modality_graph",
        2,
        "mid",
        {"d_model": 32, "conv": "gcn", "readout": "attention", "layers": 3},
    ),
    ("graph.token_graph", 3, "hybrid", {"d_model": 32, "edges": "learned", "heads": 4}),
    (
        "graph.token_graph",
        3,
        "late",
        {
            "d_model": 32,
            "edges": "knn",
            "k": 8,
            "max_tokens": 4,
            "heads": 1,
            "readout": "attention",
            "layers": 1,
        },
    ),
]


def _grads_everywhere(fusion, feats):
    fusion.train()
    out = fusion(feats)
    assert out.z.shape == (5, 12) and torch.isfinite(out.z).all()
    (out.z.pow(2).mean() + out.aux_loss).backward()
    for name, p in fusion.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient for {name}"


@pytest.mark.parametrize(
    "name,n,point,hp", BRANCHES, ids=[f"{b[0]}-{b[1]}m-{b[2]}-{i}" for i, b in enumerate(BRANCHES)]
)
def test_non_default_branches(name, n, point, hp):
    torch.manual_seed(0)
    shapes = fake_shapes(n)
    fusion = create_fusion(name, shapes, 12, point, **hp)
    _grads_everywhere(fusion, fake_features(shapes, absent="m1"))


def test_branches_build_the_right_layers():
    from torch_geometric.nn import DenseGATConv, DenseGCNConv

    shapes = fake_shapes(3)
    gcn = create_fusion("graph.modality_graph", shapes, 12, "late", conv="gcn")
    gat = create_fusion("graph.modality_graph", shapes, 12, "late", conv="gat", heads=4)
    assert all(isinstance(layer.conv, DenseGCNConv) for layer in gcn.layers)
    assert all(
        isinstance(layer.conv, DenseGATConv) and layer.conv.heads == 4 for layer in gat.layers
    )
    assert gcn.readout.gate is None
    pairwise = create_fusion("attention.inter_cross", fake_shapes(3), 12, "late")
    shared = create_fusion("attention.inter_cross", fake_shapes(PAIRWISE_LIMIT + 1), 12, "late")
    assert len(pairwise.cross) == 3 * 2
    assert len(shared.cross) == PAIRWISE_LIMIT + 1
    with pytest.raises(ValueError):
        create_fusion("graph.modality_graph", shapes, 12, "late", conv="sage")
    with pytest.raises(ValueError):
        create_fusion("graph.token_graph", shapes, 12, "late", edges="radius")


def test_every_space_combination_has_valid_heads():
    for name in METHODS:
        space = FUSIONS.get(name).meta["space"]
        assert set(FUSIONS.get(name).meta["points"]) == {"early", "mid", "late", "hybrid"}
        for d_model, heads in itertools.product(space["d_model"], space["heads"]):
            assert d_model % heads == 0, (name, d_model, heads)


def _corrupt_absent_rows(feats, modality, seed=1):
    """Fill the rows where ``modality`` is absent with noise: a fusion must ignore it."""
    g = torch.Generator().manual_seed(seed)
    f = feats[modality]
    absent = ~f.present

    def noisy(x):
        noise = torch.randn(x.shape, generator=g) * 5
        return torch.where(absent.view(-1, *([1] * (x.dim() - 1))), noise, x)

    out = dict(feats)
    out[modality] = ModalityFeatures(
        noisy(f.pooled), noisy(f.tokens), [noisy(x) for x in f.levels], f.present, f.token_mask
    )
    return out


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("point", ["late", "hybrid"])
def test_absent_modality_leaves_other_rows_alone(name, point):
    torch.manual_seed(0)
    shapes = fake_shapes(3)
    fusion = create_fusion(name, shapes, 12, point).eval()
    full = fake_features(shapes)
    partial = fake_features(shapes, absent="m0")  # m0 missing in rows 0 and 2
    with torch.no_grad():
        z_full, z_partial = fusion(full).z, fusion(partial).z
        z_noise = fusion(_corrupt_absent_rows(partial, "m0")).z
    keep = [1, 3, 4]
    assert torch.allclose(z_full[keep], z_partial[keep], atol=1e-5)
    # what an absent modality carries is ignored; it does change the rows that lack it
    assert torch.allclose(z_partial, z_noise, atol=1e-5)
    assert not torch.allclose(z_full[[0, 2]], z_partial[[0, 2]], atol=1e-5)


def test_knn_edges_ignore_absent_rows_content():
    torch.manual_seed(0)
    shapes = fake_shapes(3)
    fusion = create_fusion("graph.token_graph", shapes, 12, "hybrid", edges="knn", k=3).eval()
    partial = fake_features(shapes, absent="m2")
    with torch.no_grad():
        a = fusion(partial).z
        b = fusion(_corrupt_absent_rows(partial, "m2")).z
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("name", METHODS)
def test_modality_absent_for_the_whole_batch(name):
    torch.manual_seed(0)
    shapes = fake_shapes(3)
    fusion = create_fusion(name, shapes, 12, "hybrid")
    feats = fake_features(shapes)
    f = feats["m1"]
    feats["m1"] = ModalityFeatures(
        f.pooled * 0,
        f.tokens * 0,
        [x * 0 for x in f.levels],
        torch.zeros_like(f.present),
        f.token_mask,
    )
    # and one row that has no modality at all
    for m in ("m0", "m2"):
        feats[m].present[3] = False
    fusion.train()
    out = fusion(feats)
    assert out.z.shape == (5, 12) and torch.isfinite(out.z).all()
    out.z.pow(2).mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in fusion.parameters() if p.grad is not None)


def test_key_padding_mask_never_masks_a_whole_row():
    valid = torch.tensor([[True, False, False], [False, False, False]])
    kpm = key_padding_mask(valid)
    assert kpm.tolist() == [[False, True, True], [False, False, False]]


def test_knn_adjacency_skips_masked_nodes():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 4)
    mask = torch.tensor([[True] * 7, [True, True, False, True, False, False, False]])
    adj = knn_adjacency(x, mask, k=3)
    assert adj.diagonal(dim1=1, dim2=2).sum() == 0  # self-loops are the layer's job
    assert (adj[0].sum(-1) == 3).all()
    # sample 1 has 3 valid nodes: each receives from the 2 others, masked nodes are isolated
    v = mask[1]
    assert (adj[1][v].sum(-1) == 2).all()
    assert adj[1][~v].sum() == 0 and adj[1][:, ~v].sum() == 0
    # the chosen neighbours are the nearest ones
    d = torch.cdist(x[0], x[0]).fill_diagonal_(float("inf"))
    nearest = d.topk(3, largest=False).indices
    assert adj[0].gather(1, nearest).sum() == 7 * 3


def test_cap_tokens_is_a_masked_adaptive_mean():
    x = torch.arange(2 * 6 * 1, dtype=torch.float).view(2, 6, 1)
    valid = torch.tensor([[True, True, True, True, False, False], [False] * 6])
    same, same_valid = cap_tokens(x, valid, 8)
    assert same is x and same_valid is valid
    pooled, pooled_valid = cap_tokens(x, valid, 3)  # windows {0,1} {2,3} {4,5}
    assert pooled.shape == (2, 3, 1)
    assert pooled_valid.tolist() == [[True, True, False], [False, False, False]]
    assert pooled[0, :2, 0].tolist() == [0.5, 2.5]
    assert torch.isfinite(pooled).all() and (pooled[1] == 0).all()
