"""Contract checks reusable by plugin authors (run them over your registered fusion or encoder)."""

from autofuse.testing.fusion_contract import check_fusion_contract, fake_features, fake_shapes

__all__ = ["check_fusion_contract", "fake_features", "fake_shapes"]
