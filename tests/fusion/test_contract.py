"""Every registered fusion method passes the same contract (timm-style registry parametrization)."""

import pytest

from autofuse.fusion import FUSIONS
from autofuse.testing import check_fusion_contract

CASES = [
    (e.name, n, p)
    for e in FUSIONS
    for n in (2, 3, 6)
    for p in e.meta["points"]
    if e.meta.get("max_modalities") is None or n <= e.meta["max_modalities"]
]


@pytest.mark.parametrize(
    "name,n_modalities,point", CASES, ids=[f"{a}-{b}m-{c}" for a, b, c in CASES]
)
def test_fusion_contract(name, n_modalities, point):
    check_fusion_contract(name, n_modalities, point)


def test_registry_declares_points_and_space():
    for e in FUSIONS:
        assert e.meta["points"], e.name
        assert isinstance(e.meta["space"], dict), e.name
        assert e.meta["family"] in (
            "encoder_decoder",
            "attention",
            "graph",
            "generative",
            "constraint",
        )
