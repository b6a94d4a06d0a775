"""Fusion methods: a registry of ``nn.Module`` classes, one file per family."""

from autofuse.fusion import attention, constraint, encoder_decoder, generative, graph  # noqa: F401  (register methods)
from autofuse.fusion.base import (
    FUSIONS,
    Fusion,
    create_fusion,
    masked_mean,
    pooled_at_point,
    register_fusion,
    select_point,
)

__all__ = [
    "FUSIONS",
    "Fusion",
    "create_fusion",
    "masked_mean",
    "pooled_at_point",
    "register_fusion",
    "select_point",
]
