"""Constraint family: modalities tied by an alignment loss or combined by (low-rank) tensor products."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from autofuse.fusion.base import (
    Fusion,
    full_precision,
    mlp,
    pooled_at_point,
    pooled_dim,
    register_fusion,
    upcast,
)
from autofuse.types import FeatureShape, FusionOutput, ModalityFeatures

ALL_POINTS = ("early", "mid", "late", "hybrid")
ALIGNMENTS = ("cosine", "l2", "cca", "infonce")


def _masked_mean(values: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``values`` [B] over the valid rows (0 when none, still in the graph), and the count."""
    v = valid.to(values.dtype)
    n = v.sum()
    return (values * v).sum() / n.clamp_min(1.0), n


def _soft_decorrelation(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Mean squared off-diagonal entry of the correlation of ``x`` [B, S] (row weights ``w`` [B, 1])."""
    c = x.transpose(0, 1) @ (x * w)  # [S, S]
    off = c - torch.diag_embed(torch.diagonal(c))
    s = c.shape[0]
    return off.pow(2).sum() / max(s * (s - 1), 1)


def alignment_loss(
    a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor, kind: str, temperature: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Alignment loss between two views ``a``, ``b`` [B, S] on the rows where ``valid`` [B] is True.

    Returns ``(loss, counts)`` where ``counts`` is 1 when the pair had enough rows to be scored
    (1 row for cosine / l2, 2 for cca / infonce) and 0 otherwise (then ``loss`` is a 0 in the graph).

    - ``cosine``: 1 - cos(a, b), in [0, 2].
    - ``l2``: mean squared difference (the views are layer-normalised by the caller, so O(1)).
    - ``cca``: soft CCA in the style of Chang et al. 2018 ("Scalable and Effective Deep CCA via
      Soft Decorrelation"): the batch-standardised views are pulled together (mean squared
      difference) while each view's off-diagonal correlations are pushed to 0 (mean squared
      off-diagonal entry), which stops the trivial collapse of an unconstrained L2 loss. It runs
      in float32 under mixed precision (``loss`` and ``counts`` are float32 then).
    - ``infonce``: symmetric contrastive (CLIP-style) over the valid rows: row i of ``a`` must pick
      row i of ``b`` among the valid rows and vice versa; cosine logits / ``temperature``.
    """
    if kind == "cosine":
        loss, n = _masked_mean(1.0 - F.cosine_similarity(a, b, dim=-1), valid)
        return loss, (n >= 1).to(loss.dtype)
    if kind == "l2":
        loss, n = _masked_mean((a - b).pow(2).mean(dim=-1), valid)
        return loss, (n >= 1).to(loss.dtype)
    if kind == "cca":
        with full_precision(a):
            return _soft_cca(upcast(a), upcast(b), valid)
    v = valid.to(a.dtype).unsqueeze(-1)  # [B, 1]
    n = v.sum()
    enough = (n >= 2).to(a.dtype)
    if kind == "infonce":
        an, bn = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
        logits = an @ bn.transpose(0, 1) / temperature  # [B, B]
        pair_ok = valid.unsqueeze(0) & valid.unsqueeze(1)  # [B, B]
        logits = logits.masked_fill(~pair_ok, -1e4)  # invalid rows / columns take no part
        diag_ab = torch.diagonal(F.log_softmax(logits, dim=1))  # [B]: a_i picks b_i
        diag_ba = torch.diagonal(F.log_softmax(logits, dim=0))  # [B]: b_i picks a_i
        loss = -((diag_ab + diag_ba) * v.squeeze(-1)).sum() / (2.0 * n.clamp_min(1.0))
        return loss * enough, enough
    raise ValueError(f"unknown alignment {kind!r} (choose from {ALIGNMENTS})")


def _soft_cca(
    a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The soft CCA loss of :func:`alignment_loss` (``a``, ``b`` [B, S]) and its count."""
    v = valid.to(a.dtype).unsqueeze(-1)  # [B, 1]
    n = v.sum()
    enough = (n >= 2).to(a.dtype)
    w = v / n.clamp_min(1.0)  # [B, 1] row weights of the valid rows

    def standardise(x: torch.Tensor) -> torch.Tensor:
        mean = (x * w).sum(dim=0)  # [S]
        var = ((x - mean).pow(2) * w).sum(dim=0)  # [S]
        return (x - mean) / (var + 1e-4).sqrt()

    sa, sb = standardise(a), standardise(b)  # [B, S]
    dist = ((sa - sb).pow(2).mean(dim=-1) * w.squeeze(-1)).sum()
    loss = dist + _soft_decorrelation(sa, w) + _soft_decorrelation(sb, w)
    return loss * enough, enough


@register_fusion(
    "coordinated",
    family="constraint",
    points=ALL_POINTS,
    space={
        "shared": [32, 64, 128],
        "hidden": [64, 128],
        "alignment": list(ALIGNMENTS),
        "temperature": {"low": 0.05, "high": 0.5, "log": True},
        "combine": ["concat", "mean"],
        "dropout": {"low": 0.0, "high": 0.3},
    },
    description="per-modality projections into a shared space tied by an alignment loss "
    "(cosine, L2, soft CCA or InfoNCE), then an MLP",
)
class CoordinatedFusion(Fusion):
    """Coordinated representations: one projection per modality into a shared, layer-normalised
    space; ``aux_loss`` = the alignment loss averaged over the pairs of modalities (each pair scored
    on the rows where both are present; pairs without enough rows are left out, so a batch of one
    row under InfoNCE / CCA, or with no pair present, gives 0). ``z`` = an MLP over the
    concatenation (``combine="concat"``) or the mean (``"mean"``) of the present projections, plus
    the presence flags.
    """

    def __init__(
        self,
        inputs: dict[str, FeatureShape],
        out_dim: int,
        point: str = "late",
        shared: int = 64,
        hidden: int = 128,
        alignment: str = "cosine",
        temperature: float = 0.1,
        combine: str = "concat",
        dropout: float = 0.1,
    ) -> None:
        super().__init__(inputs, out_dim, point)
        if alignment not in ALIGNMENTS:
            raise ValueError(f"unknown alignment {alignment!r} (choose from {ALIGNMENTS})")
        if combine not in ("concat", "mean"):
            raise ValueError(f"combine must be 'concat' or 'mean', got {combine!r}")
        self.shared, self.alignment, self.temperature, self.combine = (
            shared,
            alignment,
            temperature,
            combine,
        )
        self.projs = nn.ModuleDict(
            {
                m: nn.Sequential(
                    nn.LayerNorm(pooled_dim(s, point)),
                    mlp(pooled_dim(s, point), hidden, shared, 1, dropout),
                )
                for m, s in inputs.items()
            }
        )
        M = len(inputs)
        in_dim = (shared * M if combine == "concat" else shared) + M
        self.head = mlp(in_dim, hidden, out_dim, 1, dropout)

    def forward(self, features: dict[str, ModalityFeatures]) -> FusionOutput:
        ps = torch.stack(
            [self.projs[m](pooled_at_point(features[m], self.point)) for m in self.modalities],
            dim=1,
        )  # [B, M, S]
        ps = F.layer_norm(ps, (self.shared,))  # shared space: unit RMS, no collapse to 0
        present = torch.stack([features[m].present for m in self.modalities], dim=1)  # [B, M] bool
        pm = present.to(ps.dtype).unsqueeze(-1)  # [B, M, 1]

        total, scored = ps.new_zeros(()), ps.new_zeros(())
        for i, j in itertools.combinations(range(len(self.modalities)), 2):
            loss, ok = alignment_loss(
                ps[:, i], ps[:, j], present[:, i] & present[:, j], self.alignment, self.temperature
            )
            total, scored = total + loss, scored + ok
        aux = total / scored.clamp_min(1.0)

        if self.combine == "concat":
            fused = (ps * pm).flatten(1)  # [B, M*S]
        else:
            fused = (ps * pm).sum(dim=1) / pm.sum(dim=1).clamp_min(1.0)  # [B, S]
        z = self.head(torch.cat([fused, pm.squeeze(-1)], dim=-1))  # [B, out_dim]
        return FusionOutput(z=z, aux_loss=aux)


MAX_TENSOR = 2**14  # flattened outer-product size cap (the first layer is MAX_TENSOR x hidden)


def tensor_dims(n_modalities: int, rank_dim: int) -> int:
    """Largest per-modality projection ``d <= rank_dim`` with ``(d + 1) ** n <= MAX_TENSOR``.

    2 modalities: up to 127; 3: 24; 4: 10; 5: 5; 6: 4.
    """
    d = max(int(rank_dim), 1)
    while d > 1 and (d + 1) ** n_modalities > MAX_TENSOR:
        d -= 1
    return d


@register_fusion(
    "tensor",
    family="constraint",
    points=ALL_POINTS,
    space={
        "rank_dim": [4, 8, 16],
        "hidden": [32, 64, 128],
        "dropout": {"low": 0.0, "high": 0.3},
    },
    max_modalities=6,
    aux_loss=False,
    description="Tensor Fusion Network: outer product of the modalities' small projections "
    "(each with a 1 appended), flattened, then an MLP",
)
class TensorFusion(Fusion):
    """Tensor Fusion Network (Zadeh et al. 2017).

    Each modality is projected to ``d`` values (``tanh``, so the products stay bounded), a 1 is
    appended, and the outer product over the modalities is flattened: it holds every unimodal,
    bimodal, ..., M-modal interaction term. Its size is ``(d + 1) ** M``, so ``d`` is
    ``min(rank_dim, the largest d with (d + 1) ** M <= 2**14)`` (see :func:`tensor_dims`).

    Cap: 6 modalities -- beyond that the per-modality projection would shrink to 3 values or fewer
    and the interaction tensor stops being informative; use ``low_rank_tensor`` instead.
    An absent modality contributes ``[0, ..., 0, 1]``, so only the terms without it survive.
    Under mixed precision the product and the MLP over its ``(d + 1) ** M`` terms run in float32.
    """

    def __init__(
        self,
        inputs: dict[str, FeatureShape],
        out_dim: int,
        point: str = "late",
        rank_dim: int = 8,
        hidden: int = 64,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(inputs, out_dim, point)
        self.d = tensor_dims(len(inputs), rank_dim)
        self.projs = nn.ModuleDict(
            {
                m: nn.Sequential(
                    nn.LayerNorm(pooled_dim(s, point)),
                    nn.Linear(pooled_dim(s, point), self.d),
                    nn.Tanh(),
                )
                for m, s in inputs.items()
            }
        )
        self.head = mlp((self.d + 1) ** len(inputs), hidden, out_dim, 1, dropout)

    def forward(self, features: dict[str, ModalityFeatures]) -> FusionOutput:
        hs = []
        for m in self.modalities:
            f = features[m]
            h = self.projs[m](pooled_at_point(f, self.point))  # [B, d]
            hs.append((h, f.present.unsqueeze(-1)))  # 0 if absent (below)
        with full_precision(hs[0][0]):
            t = None
            for h, p in hs:
                h = upcast(h) * upcast(p)
                h1 = torch.cat([h, torch.ones_like(h[:, :1])], dim=-1)  # [B, d+1]
                t = h1 if t is None else (t.unsqueeze(-1) * h1.unsqueeze(1)).flatten(1)
            z = self.head(t)  # [B, out_dim]; t is [B, (d+1)^M]
        return FusionOutput(z=z, aux_loss=self.zero_aux(z))


@register_fusion(
    "low_rank_tensor",
    family="constraint",
    points=ALL_POINTS,
    space={
        "rank": {"low": 2, "high": 8},
        "hidden": [16, 32, 64],
        "dropout": {"low": 0.0, "high": 0.3},
    },
    aux_loss=False,
    description="Low-rank Multimodal Fusion: modality-specific low-rank factors, elementwise "
    "product over modalities, weighted sum over the rank",
)
class LowRankTensorFusion(Fusion):
    """Low-rank Multimodal Fusion (Liu et al. 2018): the TFN weight tensor factorised into
    ``rank`` modality-specific factors ``W_m`` [rank, hidden+1, out_dim]; cost linear in M.

    ``z = sum_r w_r * prod_m (h_m W_m[r]) + b`` with ``h_m = [tanh(proj_m(x_m)), 1]``. An absent
    modality keeps only the appended 1 (its projection part is zeroed). The factors' "1" row starts
    at 1 (the rest small), so at initialisation the product is about 1 + a sum of unimodal terms,
    which keeps it well scaled for many modalities. Under mixed precision the factor products
    run in float32.
    """

    def __init__(
        self,
        inputs: dict[str, FeatureShape],
        out_dim: int,
        point: str = "late",
        rank: int = 4,
        hidden: int = 32,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(inputs, out_dim, point)
        self.projs = nn.ModuleDict(
            {
                m: nn.Sequential(
                    nn.LayerNorm(pooled_dim(s, point)),
                    nn.Linear(pooled_dim(s, point), hidden),
                    nn.Tanh(),
                    nn.Dropout(dropout),
                )
                for m, s in inputs.items()
            }
        )
        self.factors = nn.ParameterDict()
        for m in inputs:
            w = torch.randn(rank, hidden + 1, out_dim) / hidden**0.5
            w[:, hidden, :] = 1.0  # the row multiplying the appended 1
            self.factors[m] = nn.Parameter(w)
        self.rank_weights = nn.Parameter(torch.full((rank,), 1.0 / rank))
        self.bias = nn.Parameter(torch.zeros(out_dim))

    def forward(self, features: dict[str, ModalityFeatures]) -> FusionOutput:
        hs = {m: self.projs[m](pooled_at_point(features[m], self.point)) for m in self.modalities}
        with full_precision(next(iter(hs.values()))):
            prod = None
            for m in self.modalities:
                h = upcast(hs[m]) * features[m].present.unsqueeze(-1).to(
                    upcast(hs[m]).dtype
                )  # [B, H]
                h1 = torch.cat([h, torch.ones_like(h[:, :1])], dim=-1)  # [B, H+1]
                fm = torch.einsum("bh,rho->bro", h1, self.factors[m])  # [B, rank, out]
                prod = fm if prod is None else prod * fm  # [B, rank, out]
            z = torch.einsum("r,bro->bo", self.rank_weights, prod) + self.bias  # [B, out_dim]
        return FusionOutput(z=z, aux_loss=self.zero_aux(z))
