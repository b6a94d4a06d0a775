"""Core data contracts shared by encoders, fusions and the model (see docs/architecture.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

MODALITY_TYPES = ("image", "audio", "text", "tabular", "timeseries")
TASKS = ("classification", "regression", "multilabel")
FUSION_POINTS = ("early", "mid", "late", "hybrid")


@dataclass
class ModalityFeatures:
    """What an encoder returns for one modality and one batch.

    Attributes:
        pooled: ``[B, D]`` final pooled embedding.
        tokens: ``[B, N, D]`` final token sequence (patches, words, frames, features).
        levels: per encoder stage, ``[B, N_l, D_l]`` (earliest first); used by fusion points.
        present: ``[B]`` bool, False where the sample lacks this modality. Rows that are absent
            carry zeros in every tensor.
        token_mask: optional ``[B, N]`` bool, True for real (non-padding) tokens.
    """

    pooled: torch.Tensor
    tokens: torch.Tensor
    levels: list[torch.Tensor]
    present: torch.Tensor
    token_mask: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> ModalityFeatures:
        return ModalityFeatures(
            pooled=self.pooled.to(device),
            tokens=self.tokens.to(device),
            levels=[lv.to(device) for lv in self.levels],
            present=self.present.to(device),
            token_mask=None if self.token_mask is None else self.token_mask.to(device),
        )


@dataclass(frozen=True)
class FeatureShape:
    """Static shape of an encoder's output (without the batch dimension).

    Attributes:
        dim: D of ``pooled`` and ``tokens``.
        n_tokens: N of ``tokens``.
        levels: ``(N_l, D_l)`` per stage, earliest first.
    """

    dim: int
    n_tokens: int
    levels: tuple[tuple[int, int], ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return {
            "dim": self.dim,
            "n_tokens": self.n_tokens,
            "levels": [list(x) for x in self.levels],
        }

    @classmethod
    def from_dict(cls, d: dict) -> FeatureShape:
        return cls(
            int(d["dim"]), int(d["n_tokens"]), tuple((int(a), int(b)) for a, b in d["levels"])
        )


@dataclass
class FusionOutput:
    """``z``: ``[B, out_dim]`` fused representation; ``aux_loss``: scalar auxiliary loss."""

    z: torch.Tensor
    aux_loss: torch.Tensor
