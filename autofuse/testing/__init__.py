"""Contract checks reusable by plugin authors (run them over your registered fusion or encoder),
and test hooks (:class:`InjectFaults`; imported from ``autofuse.testing.faults``)."""

from autofuse.testing.fusion_contract import check_fusion_contract, fake_features, fake_shapes

__all__ = ["check_fusion_contract", "fake_features", "fake_shapes"]
