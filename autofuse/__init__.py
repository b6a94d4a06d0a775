"""autofuse: search neural fusion architectures for multimodal datasets.

Heavy dependencies are imported lazily (Optuna's ``_imports`` idea): ``import autofuse`` is cheap
and the first access to an attribute imports the module that defines it.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Dataset": "autofuse.data",
    "DatasetError": "autofuse.data",
    "validate_dataset": "autofuse.data",
    "ArchitectureSpec": "autofuse.spec",
    "load_architecture": "autofuse.spec",
    "save_architecture": "autofuse.spec",
    "build_model": "autofuse.model",
    "MultimodalModel": "autofuse.model",
    "search": "autofuse.study",
    "load": "autofuse.predict",
    "load_space": "autofuse.space",
    "register_fusion": "autofuse.fusion",
    "register_encoder": "autofuse.encoders",
    "ModalityFeatures": "autofuse.types",
    "FeatureShape": "autofuse.types",
    "FusionOutput": "autofuse.types",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'autofuse' has no attribute {name!r}")
