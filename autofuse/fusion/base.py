"""Fusion contract, registry and helpers to read features at a fusion point."""

from __future__ import annotations

import torch
from torch import nn

from autofuse.errors import ConfigError
from autofuse.registry import Registry
from autofuse.types import FUSION_POINTS, FeatureShape, ModalityFeatures

FUSIONS: Registry[type[nn.Module]] = Registry("fusion method")


def register_fusion(
    name: str,
    *,
    family: str,
    points: tuple[str, ...],
    space: dict | None = None,
    max_modalities: int | None = None,
    aux_loss: bool | None = None,
    description: str = "",
):
    """Register a fusion ``nn.Module`` class under ``"<family>.<name>"``.

    Args:
        name: method name inside its family (e.g. ``"early"``).
        family: one of the five fusion families.
        points: fusion points the method accepts (subset of early/mid/late/hybrid).
        space: default hyperparameter ranges (list = categorical, {low, high[, log, step]} = range).
        max_modalities: a cap for methods whose cost explodes with the number of modalities.
        aux_loss: whether the method returns a non-zero auxiliary loss (then the search also
            tunes its weight); default: True for the generative and constraint families.
        description: one line shown by ``autofuse fusions``.
    """
    bad = [p for p in points if p not in FUSION_POINTS]
    if bad:
        raise ValueError(f"unknown fusion points {bad} for {family}.{name}")
    return FUSIONS.register(
        f"{family}.{name}",
        family=family,
        method=name,
        points=tuple(points),
        space=dict(space or {}),
        max_modalities=max_modalities,
        aux_loss=(family in ("generative", "constraint")) if aux_loss is None else aux_loss,
        description=description,
    )


def upcast(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 when it is in a half-precision type (float16 / bfloat16), else as it is
    (a float64 model stays float64)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def full_precision(ref: torch.Tensor) -> torch.autocast:
    """Autocast off on ``ref``'s device: under mixed precision, what runs inside (with
    ``.float()`` inputs) stays float32. For the computations bfloat16's 8-bit mantissa spoils:
    products over many factors (tensor fusion), exp / log of variances (a VAE's KL term) and
    batch covariance statistics (soft CCA)."""
    return torch.autocast(device_type=ref.device.type, enabled=False)


class Fusion(nn.Module):
    """Base class: ``forward(features) -> FusionOutput(z [B, out_dim], aux_loss scalar)``.

    Subclasses receive the static input shapes, the output width, the fusion point and their
    hyperparameters (the names declared in ``space``).
    """

    def __init__(self, inputs: dict[str, FeatureShape], out_dim: int, point: str = "late") -> None:
        super().__init__()
        self.modalities = list(inputs)
        self.inputs = dict(inputs)
        self.out_dim = out_dim
        self.point = point

    def zero_aux(self, ref: torch.Tensor) -> torch.Tensor:
        return ref.new_zeros(())


def point_shapes(shape: FeatureShape, point: str) -> list[tuple[int, int]]:
    """``(N, D)`` of each tensor :func:`select_point` returns for this point."""
    lv = list(shape.levels)
    late = (shape.n_tokens, shape.dim)
    if point == "late" or not lv:
        return [late]
    if point == "early":
        return [lv[0]]
    if point == "mid":
        return [lv[len(lv) // 2]]
    # hybrid: earliest stage, a middle stage and the final tokens
    picks = [lv[0], lv[len(lv) // 2]] if len(lv) > 1 else [lv[0]]
    return picks + [late]


def select_point(
    feats: ModalityFeatures, point: str
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Tensors ``[B, N, D]`` (with an optional ``[B, N]`` token mask) read at a fusion point."""
    lv = feats.levels
    late = (feats.tokens, feats.token_mask)
    if point == "late" or not lv:
        return [late]
    if point == "early":
        return [(lv[0], None)]
    if point == "mid":
        return [(lv[len(lv) // 2], None)]
    picks = [(lv[0], None), (lv[len(lv) // 2], None)] if len(lv) > 1 else [(lv[0], None)]
    return picks + [late]


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over tokens: ``[B, N, D]`` -> ``[B, D]``, ignoring padding where ``mask`` is False."""
    if mask is None:
        return x.mean(dim=1)
    m = mask.to(x.dtype).unsqueeze(-1)  # [B, N, 1]
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def pooled_at_point(feats: ModalityFeatures, point: str) -> torch.Tensor:
    """One vector per sample read at ``point``: ``[B, sum of D over the selected tensors]``.

    At ``late`` this is the encoder's own pooled embedding.
    """
    if point == "late":
        return feats.pooled
    parts = []
    for x, mask in select_point(feats, point):
        parts.append(feats.pooled if x is feats.tokens else masked_mean(x, mask))
    return torch.cat(parts, dim=-1)


def pooled_dim(shape: FeatureShape, point: str) -> int:
    """Width of :func:`pooled_at_point` for this shape and point."""
    if point == "late":
        return shape.dim
    return sum(d for _, d in point_shapes(shape, point))


def mlp(in_dim: int, hidden: int, out_dim: int, depth: int, dropout: float) -> nn.Sequential:
    """``depth`` hidden layers of width ``hidden`` (GELU, dropout), then a linear to ``out_dim``."""
    layers: list[nn.Module] = []
    d = in_dim
    for _ in range(depth):
        layers += [nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout)]
        d = hidden
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


def create_fusion(
    name: str, inputs: dict[str, FeatureShape], out_dim: int, point: str, **hparams
) -> Fusion:
    """Build a registered fusion by its ``family.method`` name."""
    entry = FUSIONS.get(name)
    if point not in entry.meta["points"]:
        raise ConfigError(
            f"fusion {name} does not accept point {point!r} (accepts {entry.meta['points']})"
        )
    cap = entry.meta.get("max_modalities")
    if cap is not None and len(inputs) > cap:
        raise ConfigError(f"fusion {name} supports at most {cap} modalities, got {len(inputs)}")
    return entry.obj(inputs, out_dim, point=point, **hparams)
