"""Dataset builders: write a ready-to-use dataset folder (``dataset.yaml`` + table + files).

- :func:`build_demo`: small synthetic image + text + tabular dataset, no external data.
- :func:`build_avmnist`: AV-MNIST-style audio-visual digits from MNIST IDX files and FSDD WAVs.
"""

from __future__ import annotations

from autofuse.data.builders.avmnist import DEFAULT_TEST_SPEAKERS, build_avmnist
from autofuse.data.builders.demo import build_demo

__all__ = ["DEFAULT_TEST_SPEAKERS", "build_avmnist", "build_demo"]
