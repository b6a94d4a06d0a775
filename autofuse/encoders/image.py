"""Image encoders: any timm model (``image.timm``) and a small CNN trainable on a CPU.

Both read uint8 ``[B, 3, S, S]`` (see ``preprocess.py``) and normalise inside the module. The
building blocks here (:class:`ConvStack`, :class:`TimmEncoder`) are reused by the audio encoders
on log-mel spectrograms.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from autofuse._util import first_line
from autofuse.encoders.base import Encoder, EncoderSpec, register_encoder
from autofuse.encoders.cache import file_sha256
from autofuse.errors import ConfigError
from autofuse.types import FeatureShape, ModalityFeatures

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def grid_tokens(x: torch.Tensor, grid: int | None) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, g*g, C]`` (adaptive-average-pooled to ``grid``; None = as is)."""
    if grid:
        x = F.adaptive_avg_pool2d(x, grid)
    return x.flatten(2).transpose(1, 2)


class ConvStack(nn.Module):
    """``len(widths)`` stages of (conv3x3-BN-ReLU) x2 + 2x2 max-pool; returns every stage."""

    def __init__(self, in_chans: int, widths: list[int], dropout: float = 0.0) -> None:
        super().__init__()
        stages = []
        c = in_chans
        for w in widths:
            stages.append(
                nn.Sequential(
                    nn.Conv2d(c, w, 3, padding=1, bias=False),
                    nn.BatchNorm2d(w),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(w, w, 3, padding=1, bias=False),
                    nn.BatchNorm2d(w),
                    nn.ReLU(inplace=True),
                    nn.MaxPool2d(2, ceil_mode=True),
                    nn.Dropout2d(dropout),
                )
            )
            c = w
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self.stages:
            x = stage(x)  # [B, w_i, H / 2^(i+1), W / 2^(i+1)]
            outs.append(x)
        return outs


def stage_widths(dim: int, depth: int) -> list[int]:
    """Widths doubling up to ``dim`` at the last stage (at least 8)."""
    return [max(8, dim // 2 ** (depth - 1 - i)) for i in range(depth)]


class SmallCNNEncoder(Encoder):
    """Small CNN over a ``[B, C, H, W]`` input; levels = its stages pooled to a small grid.

    Subclasses set ``in_chans`` and :meth:`normalize`.
    """

    in_chans: ClassVar[int] = 3
    input_size: tuple[int, int]

    def __init__(self, spec: EncoderSpec, state: dict) -> None:
        super().__init__(spec, state)
        p = self.params
        depth = int(p["depth"])
        self.level_grid, self.token_grid = int(p["level_grid"]), int(p["token_grid"])
        widths = stage_widths(spec.dim, depth)
        widths[-1] = spec.dim
        self.body = ConvStack(self.in_chans, widths, float(p["dropout"]))
        lg, tg = self.level_grid, self.token_grid
        self.feature_shape = FeatureShape(
            dim=spec.dim, n_tokens=tg * tg, levels=tuple((lg * lg, w) for w in widths)
        )

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()

    def forward(self, x: torch.Tensor, present: torch.Tensor) -> ModalityFeatures:
        x, present = self._to_device(x), self._to_device(present)
        stages = self.body(self.normalize(x))  # list of [B, w_i, H_i, W_i]
        last = stages[-1]  # [B, dim, H_L, W_L]
        pooled = last.mean(dim=(2, 3))  # [B, dim]
        tokens = grid_tokens(last, self.token_grid)  # [B, tg*tg, dim]
        levels = [grid_tokens(s, self.level_grid) for s in stages]  # [B, lg*lg, w_i]
        return self.finalize(pooled, tokens, levels, present)


@register_encoder(
    "image.small_cnn",
    modality="image",
    modes=("scratch",),
    space={
        "dim": [32, 64, 128],
        "depth": {"low": 3, "high": 4},
        "dropout": {"low": 0.0, "high": 0.3},
    },
    description="small CNN (3-4 conv stages) trained from scratch; fast on a CPU",
)
class ImageSmallCNN(SmallCNNEncoder):
    """Small CNN for images; input normalised with ImageNet statistics."""

    input_kind = "image"
    defaults: ClassVar[dict[str, Any]] = {
        "depth": 4,
        "dropout": 0.0,
        "image_size": 64,
        "level_grid": 2,
        "token_grid": 4,
    }
    preprocess_keys = ("image_size",)

    def __init__(self, spec: EncoderSpec, state: dict) -> None:
        super().__init__(spec, state)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255.0 - self.mean) / self.std


# ---------------------------------------------------------------------------- timm
def _pretrained_arg(value: Any) -> tuple[bool, str | None]:
    """``params["pretrained"]`` -> ``(pretrained, local file or None)``."""
    if isinstance(value, bool) or value is None:
        return bool(value), None
    if isinstance(value, str):
        if value.lower() in ("true", "false"):
            return value.lower() == "true", None
        if not Path(value).expanduser().is_file():
            raise ConfigError(f"pretrained weights file {value!r} does not exist")
        return True, str(Path(value).expanduser())
    raise ConfigError(f"pretrained must be true, false or a weights file path, got {value!r}")


class TimmEncoder(Encoder):
    """A timm backbone's feature stages (``features_only=True``) as ModalityFeatures.

    tokens = last stage's spatial positions (``token_grid`` pools them), pooled = their global
    average, levels = every stage adaptive-pooled to ``level_grid`` x ``level_grid``. In frozen
    mode the native width is kept; trainable modes add a linear projection to ``spec.dim``.
    """

    in_chans: ClassVar[int] = 3

    def __init__(self, spec: EncoderSpec, state: dict) -> None:
        super().__init__(spec, state)
        import timm  # lazy: timm takes seconds to import; only timm encoders need it

        p = self.params
        pretrained, weights_file = _pretrained_arg(p["pretrained"])
        if spec.mode == "scratch":
            pretrained, weights_file = False, None
        elif not pretrained:
            logger.warning(
                "%s (%s, %s mode) starts from random weights (pretrained=false)",
                spec.name,
                p["model_name"],
                spec.mode,
            )
        kwargs: dict[str, Any] = dict(p["model_kwargs"] or {})
        if weights_file is not None:
            kwargs["pretrained_cfg_overlay"] = dict(file=weights_file)
        in_size = self.input_hw()
        if self._fixed_input_size(p["model_name"]) and "img_size" not in kwargs:
            kwargs["img_size"] = in_size if in_size[0] != in_size[1] else in_size[0]
        try:
            self.backbone = timm.create_model(
                p["model_name"],
                pretrained=pretrained,
                features_only=True,
                in_chans=self.in_chans,
                **kwargs,
            )
        except RuntimeError as e:
            if "unknown model" in str(e).lower():
                raise ConfigError(f"timm has no model {p['model_name']!r}") from None
            raise
        except OSError as e:  # hub unreachable (offline) or no such weights on the hub
            raise ConfigError(
                f"cannot fetch pretrained weights for {p['model_name']!r} ({type(e).__name__}: "
                f"{first_line(e)}); pass a local weights file as "
                f"pretrained=PATH or use pretrained=false"
            ) from None
        cfg = getattr(self.backbone, "pretrained_cfg", None) or {}
        mean = cfg.get("mean", IMAGENET_MEAN)[: self.in_chans]
        std = cfg.get("std", IMAGENET_STD)[: self.in_chans]
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.level_grid = int(p["level_grid"])
        self.token_grid = p["token_grid"]
        # one dry run on a blank input gives the stage layouts (NCHW vs NHWC) and the token count
        with torch.no_grad():
            was_training = self.backbone.training
            self.backbone.eval()
            outs = self.backbone(torch.zeros(1, self.in_chans, *in_size))
            self.backbone.train(was_training)
        channels = list(self.backbone.feature_info.channels())
        self._nhwc = [
            o.ndim == 4 and o.shape[1] != c and o.shape[-1] == c
            for o, c in zip(outs, channels, strict=True)
        ]
        last = self._nchw(outs)[-1]
        n_tokens = (
            int(self.token_grid) ** 2 if self.token_grid else int(last.shape[2] * last.shape[3])
        )
        native = channels[-1]
        self.proj = None if self.frozen else nn.Linear(native, spec.dim)
        lg2 = self.level_grid**2
        self.feature_shape = FeatureShape(
            dim=native if self.frozen else spec.dim,
            n_tokens=n_tokens,
            levels=tuple((lg2, c) for c in channels),
        )

    @staticmethod
    def _fixed_input_size(model_name: str) -> bool:
        import timm  # lazy: timm takes seconds to import; only timm encoders need it

        try:
            cfg = timm.models.get_pretrained_cfg(model_name)
        except Exception:
            return False
        return bool(getattr(cfg, "fixed_input_size", False)) if cfg is not None else False

    def input_hw(self) -> tuple[int, int]:
        s = int(self.params["image_size"])
        return s, s

    @classmethod
    def weights_identity(cls, spec: EncoderSpec) -> dict[str, Any]:
        params = cls.resolve_params(spec.params)
        pretrained, weights_file = _pretrained_arg(params["pretrained"])
        if weights_file is not None:
            return {"file_sha256": file_sha256(weights_file)}
        return {"pretrained": pretrained}

    @classmethod
    def starts_pretrained(cls, spec: EncoderSpec) -> bool:
        return bool(_pretrained_arg(cls.resolve_params(spec.params)["pretrained"])[0])

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255.0 - self.mean) / self.std

    def _nchw(self, outs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [
            o.permute(0, 3, 1, 2) if nhwc else o for o, nhwc in zip(outs, self._nhwc, strict=True)
        ]

    def forward(self, x: torch.Tensor, present: torch.Tensor) -> ModalityFeatures:
        x, present = self._to_device(x), self._to_device(present)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            stages = self._nchw(self.backbone(self.normalize(x)))  # [B, C_i, H_i, W_i]
        last = stages[-1]
        tokens = grid_tokens(last, self.token_grid)  # [B, N, C_last]
        pooled = last.mean(dim=(2, 3))  # [B, C_last]
        if self.proj is not None:
            tokens, pooled = self.proj(tokens), self.proj(pooled)  # -> spec.dim
        levels = [grid_tokens(s, self.level_grid) for s in stages]  # [B, lg*lg, C_i]
        return self.finalize(pooled, tokens, levels, present)


@register_encoder(
    "image.timm",
    modality="image",
    modes=("frozen", "finetune", "scratch"),
    space={"dim": [64, 128, 256]},
    description="any timm model (default resnet18); pretrained from the hub or a local file",
)
class ImageTimm(TimmEncoder):
    """timm image backbone.

    Params:
        model_name: any timm model with feature extraction (default ``resnet18``).
        pretrained: false, true (Hugging Face hub) or the path of a local weights file
            (``.pth`` / ``.safetensors``, loaded through ``pretrained_cfg_overlay``).
        image_size: input side in pixels (preprocessing resizes to it).
        level_grid: each stage is pooled to ``level_grid`` x ``level_grid`` level tokens.
        token_grid: pool the last stage to this grid for ``tokens`` (None = native positions).
        model_kwargs: extra ``timm.create_model`` keyword arguments.
    """

    input_kind = "image"
    defaults: ClassVar[dict[str, Any]] = {
        "model_name": "resnet18",
        "pretrained": False,
        "image_size": 64,
        "level_grid": 2,
        "token_grid": None,
        "model_kwargs": {},
    }
    preprocess_keys = ("image_size",)
