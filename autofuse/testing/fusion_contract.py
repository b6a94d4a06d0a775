"""The contract every registered fusion method must meet (used by autofuse's own tests)."""

from __future__ import annotations

import copy

import torch

from autofuse.fusion import FUSIONS, create_fusion
from autofuse.types import FeatureShape, ModalityFeatures


def fake_shapes(n_modalities: int) -> dict[str, FeatureShape]:
    """Deliberately different widths, token counts and stage shapes per modality."""
    shapes = {}
    for i in range(n_modalities):
        dim = 16 + 8 * i
        shapes[f"m{i}"] = FeatureShape(
            dim=dim, n_tokens=3 + i, levels=((8, 8 + 4 * i), (4, 12 + 4 * i), (2, 20 + 2 * i))
        )
    return shapes


def fake_features(
    shapes: dict[str, FeatureShape], batch: int = 5, absent: str | None = None, seed: int = 0
) -> dict[str, ModalityFeatures]:
    """Random features matching ``shapes``; ``absent`` names a modality missing for rows 0 and 2."""
    g = torch.Generator().manual_seed(seed)
    feats = {}
    for m, s in shapes.items():
        present = torch.ones(batch, dtype=torch.bool)
        if m == absent:
            present[[0, 2]] = False
        keep = present.float()
        mask = torch.ones(batch, s.n_tokens, dtype=torch.bool)
        mask[:, -1] = False  # one padding token
        feats[m] = ModalityFeatures(
            pooled=torch.randn(batch, s.dim, generator=g) * keep[:, None],
            tokens=torch.randn(batch, s.n_tokens, s.dim, generator=g) * keep[:, None, None],
            levels=[
                torch.randn(batch, n, d, generator=g) * keep[:, None, None] for n, d in s.levels
            ],
            present=present,
            token_mask=mask,
        )
    return feats


def check_fusion_contract(name: str, n_modalities: int, point: str, out_dim: int = 12) -> None:
    """Assert the fusion contract for one registered method, modality count and point.

    Checks: output shape, finite values, finite aux loss, a gradient on every parameter, a batch
    with an absent modality, ``state_dict`` round trip and ``.to()``.
    """
    entry = FUSIONS.get(name)
    torch.manual_seed(0)
    shapes = fake_shapes(n_modalities)
    fusion = create_fusion(name, shapes, out_dim, point)
    fusion.train()
    feats = fake_features(shapes)
    out = fusion(feats)
    assert out.z.shape == (5, out_dim), f"{name}: z has shape {tuple(out.z.shape)}"
    assert torch.isfinite(out.z).all(), f"{name}: non-finite z"
    assert out.aux_loss.dim() == 0 and torch.isfinite(out.aux_loss), f"{name}: bad aux_loss"
    (out.z.pow(2).mean() + out.aux_loss).backward()
    for pname, p in fusion.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: no gradient for {pname}"

    # absent modality in some rows
    feats_abs = fake_features(shapes, absent="m0")
    out_abs = fusion(feats_abs)
    assert torch.isfinite(out_abs.z).all(), f"{name}: non-finite z with an absent modality"

    # state_dict round trip + .to()
    fusion.eval()
    clone = create_fusion(name, shapes, out_dim, point)
    clone.load_state_dict(copy.deepcopy(fusion.state_dict()))
    clone.eval()
    with torch.no_grad():
        a, b = fusion(feats).z, clone(feats).z
    assert torch.allclose(a, b, atol=1e-6), f"{name}: state_dict round trip changed outputs"
    moved = clone.to(torch.float64).to("cpu")
    feats64 = {
        m: ModalityFeatures(
            f.pooled.double(),
            f.tokens.double(),
            [x.double() for x in f.levels],
            f.present,
            f.token_mask,
        )
        for m, f in feats.items()
    }
    with torch.no_grad():
        c = moved(feats64).z
    assert c.dtype == torch.float64 and torch.allclose(a.double(), c, atol=1e-4), (
        f"{name}: .to() broke it"
    )
    del entry
