"""Encoders: a registry of ``nn.Module`` classes (one file per modality type), the
preprocessing that decodes a modality once for all rows, and the on-disk feature cache of frozen
encoders. ``timm`` and ``sentence_transformers`` are imported only when such an encoder is built.
"""

from autofuse.encoders import audio, image, tabular, text, timeseries  # noqa: F401  (registration)
from autofuse.encoders.base import (
    ENCODERS,
    MODES,
    Encoder,
    EncoderSpec,
    create_encoder,
    get_encoder_entry,
    list_encoders,
    register_encoder,
)
from autofuse.encoders.cache import CachedFeatures, FeatureCache, compute_features
from autofuse.encoders.preprocess import PreparedModality, PreprocessError, prepare_modality

__all__ = [
    "ENCODERS",
    "MODES",
    "CachedFeatures",
    "Encoder",
    "EncoderSpec",
    "FeatureCache",
    "PreparedModality",
    "PreprocessError",
    "compute_features",
    "create_encoder",
    "get_encoder_entry",
    "list_encoders",
    "prepare_modality",
    "register_encoder",
]
