"""Time-series encoders over ``[B, T, C]`` (resampled to ``length``, standardised per channel)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from autofuse.encoders.base import Encoder, EncoderSpec, register_encoder
from autofuse.encoders.image import stage_widths
from autofuse.errors import ConfigError
from autofuse.types import FeatureShape, ModalityFeatures

#: Settings shared by the time-series encoders (both change preprocessing).
SERIES_DEFAULTS: dict[str, Any] = {"length": 128, "resample": True}


def pool_time(x: torch.Tensor, n: int) -> torch.Tensor:
    """``[B, T, D]`` -> ``[B, n, D]`` by adaptive average pooling over time."""
    return F.adaptive_avg_pool1d(x.transpose(1, 2), n).transpose(1, 2)


class _SeriesEncoder(Encoder):
    input_kind = "timeseries"
    preprocess_keys = tuple(SERIES_DEFAULTS)

    def __init__(self, spec: EncoderSpec, state: dict) -> None:
        super().__init__(spec, state)
        self.channels = int(self.state.get("channels", 1))
        self.n_tokens = int(self.params["n_tokens"])
        self.level_tokens = int(self.params["level_tokens"])
        if int(self.params["depth"]) < 1:
            raise ConfigError(f"{spec.name}: depth must be >= 1")


@register_encoder(
    "timeseries.cnn1d",
    modality="timeseries",
    modes=("scratch",),
    space={
        "dim": [32, 64, 128],
        "depth": {"low": 2, "high": 4},
        "kernel_size": [3, 5, 7],
        "dropout": {"low": 0.0, "high": 0.3},
    },
    description="1-D CNN over (time, channels); stages halve the time axis",
)
class SeriesCNN1d(_SeriesEncoder):
    """1-D CNN: ``depth`` stages of (conv-BN-GELU) x2 + max-pool(2).

    tokens = last stage pooled to ``n_tokens`` time steps; pooled = its mean over time; levels =
    every stage pooled to ``level_tokens`` time steps.
    """

    defaults: ClassVar[dict[str, Any]] = {
        **SERIES_DEFAULTS,
        "depth": 3,
        "kernel_size": 5,
        "dropout": 0.0,
        "n_tokens": 16,
        "level_tokens": 8,
    }

    def __init__(self, spec: EncoderSpec, state: dict) -> None:
        super().__init__(spec, state)
        k = int(self.params["kernel_size"])
        widths = stage_widths(spec.dim, int(self.params["depth"]))
        widths[-1] = spec.dim
        stages, c = [], self.channels
        for w in widths:
            stages.append(
                nn.Sequential(
                    nn.Conv1d(c, w, k, padding=k // 2, bias=False),
                    nn.BatchNorm1d(w),
                    nn.GELU(),
                    nn.Conv1d(w, w, k, padding=k // 2, bias=False),
                    nn.BatchNorm1d(w),
                    nn.GELU(),
                    nn.MaxPool1d(2, ceil_mode=True),
                    nn.Dropout(float(self.params["dropout"])),
                )
            )
            c = w
        self.stages = nn.ModuleList(stages)
        self.feature_shape = FeatureShape(
            dim=spec.dim,
            n_tokens=self.n_tokens,
            levels=tuple((self.level_tokens, w) for w in widths),
        )

    def forward(self, x: torch.Tensor, present: torch.Tensor) -> ModalityFeatures:
        x, present = self._to_device(x), self._to_device(present)
        h = x.float().transpose(1, 2)  # [B, C, T]
        levels = []
        for stage in self.stages:
            h = stage(h)  # [B, w_i, T / 2^(i+1)]
            levels.append(F.adaptive_avg_pool1d(h, self.level_tokens).transpose(1, 2))
        seq = h.transpose(1, 2)  # [B, T_L, dim]
        return self.finalize(seq.mean(dim=1), pool_time(seq, self.n_tokens), levels, present)


@register_encoder(
    "timeseries.gru",
    modality="timeseries",
    modes=("scratch",),
    space={
        "dim": [32, 64, 128],
        "depth": {"low": 1, "high": 2},
        "dropout": {"low": 0.0, "high": 0.3},
    },
    description="input projection + stacked (bidirectional) GRU over (time, channels)",
)
class SeriesGRU(_SeriesEncoder):
    """Linear input projection then ``depth`` GRU layers.

    tokens = last layer's outputs pooled to ``n_tokens`` time steps; pooled = their mean over
    time; levels = the projection and each GRU layer pooled to ``level_tokens`` time steps.
    """

    defaults: ClassVar[dict[str, Any]] = {
        **SERIES_DEFAULTS,
        "depth": 1,
        "bidirectional": True,
        "dropout": 0.0,
        "n_tokens": 16,
        "level_tokens": 8,
    }

    def __init__(self, spec: EncoderSpec, state: dict) -> None:
        super().__init__(spec, state)
        dim = spec.dim
        bi = bool(self.params["bidirectional"])
        if bi and dim % 2:
            raise ConfigError("timeseries.gru: dim must be even when bidirectional")
        self.inp = nn.Linear(self.channels, dim)
        self.grus = nn.ModuleList(
            nn.GRU(dim, dim // 2 if bi else dim, batch_first=True, bidirectional=bi)
            for _ in range(int(self.params["depth"]))
        )
        self.drop = nn.Dropout(float(self.params["dropout"]))
        self.feature_shape = FeatureShape(
            dim=dim,
            n_tokens=self.n_tokens,
            levels=tuple((self.level_tokens, dim) for _ in range(len(self.grus) + 1)),
        )

    def forward(self, x: torch.Tensor, present: torch.Tensor) -> ModalityFeatures:
        x, present = self._to_device(x), self._to_device(present)
        h = self.inp(x.float())  # [B, T, dim]
        levels = [pool_time(h, self.level_tokens)]
        for gru in self.grus:
            h = self.drop(gru(h)[0])  # [B, T, dim]
            levels.append(pool_time(h, self.level_tokens))
        return self.finalize(h.mean(dim=1), pool_time(h, self.n_tokens), levels, present)
