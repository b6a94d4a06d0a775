"""Shared fixtures: offline hub, the shared datasets, tiny datasets built on the fly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# tiny models on a 2-core machine: one torch thread per process avoids oversubscription
# (tests also start worker subprocesses, which inherit OMP_NUM_THREADS)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
from ci import need  # noqa: E402  (tests/ci.py: the one place that decides "under CI")


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    need(
        (SHARED / "mnist").is_dir() and (SHARED / "fsdd" / "recordings").is_dir(),
        f"shared datasets not found at {SHARED}",
    )
    return SHARED


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory) -> Path:
    """A small demo dataset (image + text + tabular), built once per session."""
    from autofuse.data.builders import build_demo

    return build_demo(tmp_path_factory.mktemp("demo") / "demo_data", n=240, seed=0)
