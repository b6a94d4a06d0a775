"""Encoder-decoder family: fuse features (early / mid / late / hybrid) or fuse decisions."""

from __future__ import annotations

import torch
from torch import nn

from autofuse.fusion.base import Fusion, mlp, pooled_at_point, pooled_dim, register_fusion
from autofuse.types import FeatureShape, FusionOutput, ModalityFeatures


@register_fusion(
    "early",
    family="encoder_decoder",
    points=("early", "mid", "late", "hybrid"),
    space={
        "hidden": [64, 128, 256],
        "depth": {"low": 1, "high": 3},
        "dropout": {"low": 0.0, "high": 0.5},
    },
    description="concatenate the modalities' features at the fusion point, then a shared MLP encoder",
)
class ConcatFusion(Fusion):
    """Feature concatenation + shared encoder.

    At point ``early`` this is early fusion (low-level features concatenated), at ``late`` the
    classic late (feature-level) concatenation fusion. An absent modality contributes zeros and a
    presence flag, so the shared encoder knows what is missing.
    """

    def __init__(self, inputs: dict[str, FeatureShape], out_dim: int, point: str = "late",
                 hidden: int = 128, depth: int = 1, dropout: float = 0.1) -> None:
        super().__init__(inputs, out_dim, point)
        self.norms = nn.ModuleDict({m: nn.LayerNorm(pooled_dim(s, point)) for m, s in inputs.items()})
        in_dim = sum(pooled_dim(s, point) for s in inputs.values()) + len(inputs)
        self.encoder = mlp(in_dim, hidden, out_dim, depth, dropout)

    def forward(self, features: dict[str, ModalityFeatures]) -> FusionOutput:
        parts = []
        for m in self.modalities:
            f = features[m]
            present = f.present.unsqueeze(-1).to(f.pooled.dtype)  # [B, 1]
            v = self.norms[m](pooled_at_point(f, self.point)) * present  # [B, D_m]
            parts += [v, present]
        z = self.encoder(torch.cat(parts, dim=-1))  # [B, out_dim]
        return FusionOutput(z=z, aux_loss=self.zero_aux(z))


@register_fusion(
    "decision",
    family="encoder_decoder",
    points=("late",),
    space={
        "hidden": [64, 128],
        "combine": ["mean", "weights", "gate"],
        "dropout": {"low": 0.0, "high": 0.5},
    },
    description="a head per modality; decisions combined by mean, learned weights or a gate",
)
class DecisionFusion(Fusion):
    """Decision-level (late) fusion: per-modality predictors whose outputs are combined.

    Absent modalities are left out of the combination (weights renormalised over present ones).
    """

    def __init__(self, inputs: dict[str, FeatureShape], out_dim: int, point: str = "late",
                 hidden: int = 64, combine: str = "mean", dropout: float = 0.1) -> None:
        super().__init__(inputs, out_dim, point)
        self.combine = combine
        self.heads = nn.ModuleDict({m: mlp(s.dim, hidden, out_dim, 1, dropout) for m, s in inputs.items()})
        self.logit_weights = nn.Parameter(torch.zeros(len(inputs))) if combine == "weights" else None
        total = sum(s.dim for s in inputs.values())
        self.gate = nn.Linear(total, len(inputs)) if combine == "gate" else None

    def forward(self, features: dict[str, ModalityFeatures]) -> FusionOutput:
        outs = torch.stack([self.heads[m](features[m].pooled) for m in self.modalities], dim=1)  # [B, M, out]
        present = torch.stack([features[m].present for m in self.modalities], dim=1)  # [B, M]
        B = outs.shape[0]
        if self.combine == "gate":
            scores = self.gate(torch.cat([features[m].pooled for m in self.modalities], dim=-1))  # [B, M]
        elif self.combine == "weights":
            scores = self.logit_weights.unsqueeze(0).expand(B, -1)
        else:
            scores = torch.zeros_like(present, dtype=outs.dtype)
        scores = scores.masked_fill(~present, -1e4)
        w = torch.softmax(scores, dim=1) * present.to(outs.dtype)  # [B, M]; all-absent rows -> 0
        z = (w.unsqueeze(-1) * outs).sum(dim=1)  # [B, out]
        return FusionOutput(z=z, aux_loss=self.zero_aux(z))
