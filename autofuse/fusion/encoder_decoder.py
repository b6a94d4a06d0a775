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

    def __init__(
        self,
        inputs: dict[str, FeatureShape],
        out_dim: int,
        point: str = "late",
        hidden: int = 128,
        depth: int = 1,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(inputs, out_dim, point)
        self.norms = nn.ModuleDict(
            {m: nn.LayerNorm(pooled_dim(s, point)) for m, s in inputs.items()}
        )
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

    def __init__(
        self,
        inputs: dict[str, FeatureShape],
        out_dim: int,
        point: str = "late",
        hidden: int = 64,
        combine: str = "mean",
        dropout: float = 0.1,
    ) -> None:
        super().__init__(inputs, out_dim, point)
        self.combine = combine
        self.heads = nn.ModuleDict(
            {m: mlp(s.dim, hidden, out_dim, 1, dropout) for m, s in inputs.items()}
        )
        self.logit_weights = (
            nn.Parameter(torch.zeros(len(inputs))) if combine == "weights" else None
        )
        total = sum(s.dim for s in inputs.values())
        self.gate = nn.Linear(total, len(inputs)) if combine == "gate" else None

    def forward(self, features: dict[str, ModalityFeatures]) -> FusionOutput:
        outs = torch.stack(
            [self.heads[m](features[m].pooled) for m in self.modalities], dim=1
        )  # [B, M, out]
        present = torch.stack([features[m].present for m in self.modalities], dim=1)  # [B, M]
        B = outs.shape[0]
        if self.combine == "gate":
            scores = self.gate(
                torch.cat([features[m].pooled for m in self.modalities], dim=-1)
            )  # [B, M]
        elif self.combine == "weights":
            scores = self.logit_weights.unsqueeze(0).expand(B, -1)
        else:
            scores = torch.zeros_like(present, dtype=outs.dtype)
        scores = scores.masked_fill(~present, -1e4)
        w = torch.softmax(scores, dim=1) * present.to(outs.dtype)  # [B, M]; all-absent rows -> 0
        z = (w.unsqueeze(-1) * outs).sum(dim=1)  # [B, out]
        return FusionOutput(z=z, aux_loss=self.zero_aux(z))


@register_fusion(
    "hierarchical",
    family="encoder_decoder",
    points=("hybrid",),
    space={
        "hidden": [64, 128],
        "depth": {"low": 1, "high": 2},
        "dropout": {"low": 0.0, "high": 0.5},
    },
    description="fuse the modalities stage by stage (every encoder level + the final embedding), "
    "then fuse the stage summaries",
)
class HierarchicalFusion(Fusion):
    """Hierarchical (multi-level) feature fusion.

    Each modality's levels are aligned by relative depth: stage ``s`` of the fusion reads, from
    every modality, the level nearest to ``s / (S - 1)`` of its own depth (so encoders with
    different numbers of stages line up), plus a last stage with the final pooled embeddings.
    Every stage concatenates the modalities (absent ones zeroed, with presence flags) into a
    stage summary; the summaries are concatenated and encoded into ``z``.
    """

    n_stages = 3

    def __init__(
        self,
        inputs: dict[str, FeatureShape],
        out_dim: int,
        point: str = "hybrid",
        hidden: int = 128,
        depth: int = 1,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(inputs, out_dim, point)
        self.picks = {m: self._pick_levels(len(s.levels)) for m, s in inputs.items()}
        stage_fusers = []
        for s in range(self.n_stages + 1):  # + the final pooled embeddings
            in_dim = len(inputs)  # presence flags
            for m, shape in inputs.items():
                in_dim += shape.dim if s == self.n_stages else shape.levels[self.picks[m][s]][1]
            stage_fusers.append(mlp(in_dim, hidden, hidden, 1, dropout))
        self.stage_fusers = nn.ModuleList(stage_fusers)
        self.encoder = mlp(hidden * (self.n_stages + 1), hidden, out_dim, depth, dropout)

    def _pick_levels(self, n_levels: int) -> list[int]:
        if n_levels == 0:
            raise ValueError("hierarchical fusion needs encoders with intermediate levels")
        return [round(s * (n_levels - 1) / max(self.n_stages - 1, 1)) for s in range(self.n_stages)]

    def forward(self, features: dict[str, ModalityFeatures]) -> FusionOutput:
        summaries = []
        for s, fuser in enumerate(self.stage_fusers):
            parts = []
            for m in self.modalities:
                f = features[m]
                present = f.present.unsqueeze(-1).to(f.pooled.dtype)  # [B, 1]
                v = (
                    f.pooled if s == self.n_stages else f.levels[self.picks[m][s]].mean(dim=1)
                )  # [B, D]
                parts += [v * present, present]
            summaries.append(fuser(torch.cat(parts, dim=-1)))  # [B, hidden]
        z = self.encoder(torch.cat(summaries, dim=-1))  # [B, out_dim]
        return FusionOutput(z=z, aux_loss=self.zero_aux(z))
