"""Whether the tests run under CI, decided in one place: under ``CI=true`` a missing server,
dataset or browser is a failure, never a silent skip."""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def need(condition: bool, reason: str) -> None:
    """Skip when a resource is missing, except under CI where that is a failure."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)
