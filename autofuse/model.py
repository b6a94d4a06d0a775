"""MultimodalModel = encoders (one per modality) -> fusion -> head; ``build_model`` from a spec."""

from __future__ import annotations

import torch
from torch import nn

from autofuse.encoders import create_encoder
from autofuse.encoders.base import segment_mean
from autofuse.errors import ConfigError
from autofuse.fusion import create_fusion
from autofuse.spec import ArchitectureSpec
from autofuse.types import FeatureShape, ModalityFeatures

Batch = dict[str, "ModalityFeatures | tuple[torch.Tensor, torch.Tensor]"]


def _drop_rows(f: ModalityFeatures, keep: torch.Tensor) -> ModalityFeatures:
    """Mark rows where ``keep`` is False as absent (zeros, present=False)."""
    k = keep.to(f.pooled.dtype)
    return ModalityFeatures(
        pooled=f.pooled * k[:, None],
        tokens=f.tokens * k[:, None, None],
        levels=[lv * k[:, None, None] for lv in f.levels],
        present=f.present & keep,
        token_mask=f.token_mask,
    )


class MultimodalModel(nn.Module):
    """Encoders -> fusion -> head.

    A batch maps each modality to either its raw inputs ``(x, present)`` (run through the
    modality's encoder) or to precomputed :class:`ModalityFeatures` (frozen encoders served from
    the feature cache, so the frozen backbone is not run again every epoch).
    """

    def __init__(
        self,
        encoders: dict[str, nn.Module],
        fusion: nn.Module,
        fused_dim: int,
        n_outputs: int,
        head_dropout: float = 0.1,
        modality_dropout: float = 0.0,
        max_tokens: int | None = None,
    ) -> None:
        super().__init__()
        self.max_tokens = max_tokens
        self.modalities = list(encoders)
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion
        self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(fused_dim, n_outputs))
        self.modality_dropout = modality_dropout

    def encode(self, batch: Batch) -> dict[str, ModalityFeatures]:
        feats = {}
        for m in self.modalities:
            item = batch[m]
            feats[m] = item if isinstance(item, ModalityFeatures) else self.encoders[m](*item)
        if self.max_tokens is not None:
            feats = {m: cap_tokens(f, self.max_tokens) for m, f in feats.items()}
        if self.training and self.modality_dropout > 0 and len(feats) > 1:
            feats = self._modality_dropout(feats)
        return feats

    def _modality_dropout(self, feats: dict[str, ModalityFeatures]) -> dict[str, ModalityFeatures]:
        # drop each modality per sample with probability p, but never all of a sample's modalities
        ref = next(iter(feats.values())).present
        M, B = len(feats), ref.shape[0]
        keep = torch.rand(B, M, device=ref.device) >= self.modality_dropout  # [B, M]
        present = torch.stack([f.present for f in feats.values()], dim=1)  # [B, M]
        none_left = ~(keep & present).any(dim=1)  # [B]
        keep = keep | none_left[:, None]
        return {m: _drop_rows(f, keep[:, i]) for i, (m, f) in enumerate(feats.items())}

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(outputs [B, n_outputs], aux_loss scalar)``."""
        out = self.fusion(self.encode(batch))  # z: [B, fused_dim]
        return self.head(out.z), out.aux_loss


def cap_tokens(f: ModalityFeatures, k: int) -> ModalityFeatures:
    """At most ``k`` tokens per sequence (``tokens`` and every level): longer ones are pooled
    into ``k`` consecutive groups of real tokens (:func:`segment_mean`)."""
    if f.tokens.shape[1] <= k and all(lv.shape[1] <= k for lv in f.levels):
        return f
    tokens, mask = f.tokens, f.token_mask
    if tokens.shape[1] > k:
        tokens = segment_mean(tokens, mask, k)
        if mask is not None:  # a group is real when it pooled at least one real token
            mask = segment_mean(mask[:, :, None].float(), mask, k)[:, :, 0] > 0
    levels = [segment_mean(lv, None, k) if lv.shape[1] > k else lv for lv in f.levels]
    return ModalityFeatures(f.pooled, tokens, levels, f.present, mask)


def capped_shape(shape: FeatureShape, k: int | None) -> FeatureShape:
    """The feature shape a fusion sees under :func:`cap_tokens`."""
    if k is None:
        return shape
    return FeatureShape(
        dim=shape.dim,
        n_tokens=min(shape.n_tokens, k),
        levels=tuple((min(n, k), d) for n, d in shape.levels),
    )


def n_outputs_for(dataset_info: dict) -> int:
    if dataset_info["task"] == "regression":
        return 1
    return len(dataset_info["classes"])


def build_model(
    spec: ArchitectureSpec, dataset_info: dict, *, skip_frozen: bool = False
) -> MultimodalModel:
    """Rebuild the exact model a spec describes.

    Args:
        spec: the candidate's ArchitectureSpec.
        dataset_info: ``{"task", "classes", "modalities": {name: {"type", "state"}}}`` as saved
            next to the spec (``state`` is each modality's fitted preprocessing state).
        skip_frozen: build frozen encoders as placeholders that only know their output shape
            (used in search, where their outputs come from the feature cache).
    """

    encoders: dict[str, nn.Module] = {}
    shapes = {}
    for m, espec in spec.encoders.items():
        state = dataset_info["modalities"][m]["state"]
        if skip_frozen and espec.mode == "frozen":
            shape = dataset_info["modalities"][m].get("feature_shape")
            if shape is None:
                raise ValueError(
                    f"modality {m}: frozen placeholder needs feature_shape in dataset_info"
                )
            encoders[m] = FrozenPlaceholder(FeatureShape.from_dict(shape))
        else:
            encoders[m] = create_frozen_or_trainable(espec, state)
        shapes[m] = capped_shape(encoders[m].feature_shape, spec.fusion.max_tokens)
    fusion = create_fusion(
        spec.fusion.name, shapes, spec.head.fused_dim, spec.fusion.point, **spec.fusion.params
    )
    return MultimodalModel(
        encoders,
        fusion,
        spec.head.fused_dim,
        n_outputs_for(dataset_info),
        head_dropout=spec.head.dropout,
        modality_dropout=spec.training.modality_dropout,
        max_tokens=spec.fusion.max_tokens,
    )


def full_model(
    spec: ArchitectureSpec, info: dict, state: dict[str, torch.Tensor], what: str = "weights"
) -> MultimodalModel:
    """The full model (frozen encoders built for real) with ``state`` loaded, in eval mode;
    ``state`` may lack only the frozen encoders' weights (search checkpoints do not store them).

    Raises:
        ConfigError: ``state`` does not fit the spec (``what`` names it in the message).
    """
    model = build_model(spec, info)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # frozen encoders rebuild from the spec (seeded random init or pretrained weights); one that
    # stage 1 trained (``source``) has its weights in ``state`` like any trained one
    frozen = {m for m, e in spec.encoders.items() if e.mode == "frozen" and e.source is None}
    bad = [k for k in missing if not any(k.startswith(f"encoders.{m}.") for m in frozen)]
    if bad or unexpected:
        raise ConfigError(f"{what} do not match the spec: {(bad or unexpected)[:5]}")
    return model.eval()


def create_frozen_or_trainable(espec, state: dict) -> nn.Module:
    """Create an encoder; frozen random-init backbones are seeded so cache and model agree."""
    if espec.mode == "frozen":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return create_encoder(espec, state)
    return create_encoder(espec, state)


class FrozenPlaceholder(nn.Module):
    """Stands in for a frozen encoder whose outputs come from the feature cache."""

    def __init__(self, shape) -> None:
        super().__init__()
        self.feature_shape = shape

    def forward(self, x, present):  # pragma: no cover - never called with raw inputs
        raise RuntimeError("frozen encoder placeholder: features must come from the feature cache")


def trainable_state_dict(model: MultimodalModel) -> dict[str, torch.Tensor]:
    """Parameters and buffers except those of frozen encoders (rebuildable from the spec)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
