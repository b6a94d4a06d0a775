"""Audio encoders over standardised log-mel spectrograms ``[B, 1, n_mels, T]``.

Preprocessing (``preprocess.py``) reads each WAV with ``scipy.io.wavfile``, resamples it to
``sample_rate``, crops / zero-pads it to ``duration`` seconds and computes a log-mel spectrogram
with ``torch.stft`` and a numpy mel filterbank; the values are standardised with train-split
statistics and stored as float16.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from autofuse.encoders.base import register_encoder
from autofuse.encoders.image import SmallCNNEncoder, TimmEncoder
from autofuse.encoders.preprocess import audio_frames

#: Spectrogram settings shared by the audio encoders (all change preprocessing).
AUDIO_DEFAULTS: dict[str, Any] = {
    "sample_rate": 8000,
    "duration": 1.0,
    "n_fft": 512,
    "hop_length": 128,
    "n_mels": 40,
}
AUDIO_KEYS = tuple(AUDIO_DEFAULTS)


@register_encoder(
    "audio.small_cnn",
    modality="audio",
    modes=("scratch",),
    space={
        "dim": [32, 64, 128],
        "depth": {"low": 3, "high": 4},
        "dropout": {"low": 0.0, "high": 0.3},
    },
    description="small CNN over a log-mel spectrogram, trained from scratch",
)
class AudioSmallCNN(SmallCNNEncoder):
    """Small CNN over ``[B, 1, n_mels, T]``; levels = its stages pooled to a small grid."""

    input_kind = "audio"
    in_chans = 1
    defaults: ClassVar[dict[str, Any]] = {
        **AUDIO_DEFAULTS,
        "depth": 3,
        "dropout": 0.0,
        "level_grid": 2,
        "token_grid": 4,
    }
    preprocess_keys = AUDIO_KEYS


@register_encoder(
    "audio.timm",
    modality="audio",
    modes=("frozen", "finetune", "scratch"),
    space={"dim": [64, 128, 256]},
    description="a timm model (in_chans=1, default resnet18) over a log-mel spectrogram",
)
class AudioTimm(TimmEncoder):
    """timm backbone on spectrograms (``in_chans=1``; pretrained RGB stems are summed by timm).

    Params: as ``image.timm`` (``model_name``, ``pretrained``, ``level_grid``, ``token_grid``,
    ``model_kwargs``) plus the spectrogram settings (``sample_rate``, ``duration``, ``n_fft``,
    ``hop_length``, ``n_mels``).
    """

    input_kind = "audio"
    in_chans = 1
    defaults: ClassVar[dict[str, Any]] = {
        **AUDIO_DEFAULTS,
        "model_name": "resnet18",
        "pretrained": False,
        "level_grid": 2,
        "token_grid": None,
        "model_kwargs": {},
    }
    preprocess_keys = AUDIO_KEYS

    def input_hw(self) -> tuple[int, int]:
        return int(self.params["n_mels"]), audio_frames(self.params)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()  # already standardised in preprocessing
