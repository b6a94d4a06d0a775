"""Fusion methods: a registry of ``nn.Module`` classes, one file per family."""

from autofuse.fusion import encoder_decoder  # noqa: F401  (registers its methods)
from autofuse.fusion.base import (
    FUSIONS,
    Fusion,
    create_fusion,
    masked_mean,
    pooled_at_point,
    register_fusion,
    select_point,
)

__all__ = ["FUSIONS", "Fusion", "create_fusion", "masked_mean", "pooled_at_point", "register_fusion",
           "select_point"]
