"""Encoder contract, ``EncoderSpec`` and the encoder registry (timm's ``@register_model`` pattern).

An encoder is an ``nn.Module`` built from an :class:`EncoderSpec` plus the fitted preprocessing
state of its modality (vocabulary, feature counts, ...). ``forward(x, present)`` takes one batch
of prepared inputs (see :mod:`autofuse.encoders.preprocess`) and returns
:class:`~autofuse.types.ModalityFeatures`; rows where ``present`` is False come out as zeros.

Registering a new encoder is one decorator::

    @register_encoder("image.my_net", modality="image", modes=("scratch",),
                      space={"dim": [64, 128], "depth": {"low": 2, "high": 4}},
                      description="my network")
    class MyNet(Encoder):
        input_kind = "image"
        defaults = {"depth": 3, "image_size": 64}
        preprocess_keys = ("image_size",)
        ...
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from autofuse.errors import ConfigError
from autofuse.registry import Entry, Registry
from autofuse.types import MODALITY_TYPES, FeatureShape, ModalityFeatures

logger = logging.getLogger(__name__)

MODES = ("frozen", "finetune", "scratch")
#: What ``prepare_modality`` produces for an encoder (see ``preprocess.py``).
INPUT_KINDS = ("image", "audio", "text_raw", "text_ids", "tabular", "timeseries")

ENCODERS: Registry[type[Encoder]] = Registry("encoder")
# the global RNG is process-wide: threads building frozen encoders must not interleave draws
_SEED_LOCK = threading.Lock()


class EncoderSpec(BaseModel):
    """Which encoder a modality uses, in which mode, with which settings (JSON round-trip).

    Attributes:
        name: registry name, e.g. ``"image.timm"``.
        mode: ``frozen`` (weights fixed, outputs cached on disk), ``finetune`` (pretrained
            weights trained further) or ``scratch`` (random init, trained).
        dim: output width of trainable encoders (frozen encoders keep their native width).
        params: encoder-specific settings; unknown keys are an error at ``create_encoder``.
        source: the feature-cache entry of a stage-1 training run of this encoder (staged search):
            with ``mode="frozen"`` its stored outputs are the features (and its weights the
            encoder's); with a trainable mode the encoder starts from its weights.
    """

    model_config = ConfigDict(extra="forbid")
    name: str
    mode: Literal["frozen", "finetune", "scratch"]
    dim: int = Field(default=64, ge=1)
    params: dict[str, Any] = Field(default_factory=dict)
    source: str | None = None

    @field_validator("params")
    @classmethod
    def _json_params(cls, v: dict[str, Any]) -> dict[str, Any]:
        for k, val in v.items():
            if not isinstance(val, (str, int, float, bool, type(None), list, dict)):
                raise ValueError(f"param {k!r} must be JSON-serialisable, got {type(val).__name__}")
        return v


class Encoder(nn.Module):
    """Base class of every registered encoder.

    Class attributes a subclass sets:
        input_kind: which preprocessing ``prepare_modality`` runs (one of ``INPUT_KINDS``).
        defaults: every accepted ``params`` key with its default value.
        preprocess_keys: the ``params`` keys that change preprocessing (part of its cache key).
        has_token_mask: whether ``forward`` returns a ``token_mask`` (padded token sequences).

    Instance attributes:
        spec: the :class:`EncoderSpec` it was built from.
        params: ``defaults`` overlaid with ``spec.params``.
        state: the modality's fitted preprocessing state.
        feature_shape: static output shape (set by the subclass's ``__init__``).
    """

    registry_name: ClassVar[str] = ""
    input_kind: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    preprocess_keys: ClassVar[tuple[str, ...]] = ()
    has_token_mask: ClassVar[bool] = False
    feature_shape: FeatureShape

    def __init__(self, spec: EncoderSpec, state: dict) -> None:
        super().__init__()
        self.spec = spec
        self.state = dict(state or {})
        self.params = self.resolve_params(spec.params)
        # empty, non-persistent: tells forward() which device the module lives on
        self.register_buffer("_device_probe", torch.zeros(0), persistent=False)

    # ----------------------------------------------------------------- class helpers
    @classmethod
    def resolve_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """``defaults`` overlaid with ``params``; unknown keys raise :class:`ConfigError`."""
        unknown = sorted(set(params) - set(cls.defaults))
        if unknown:
            raise ConfigError(
                f"encoder {cls.__name__}: unknown params {unknown} (accepted: {sorted(cls.defaults)})"
            )
        return {**cls.defaults, **params}

    @classmethod
    def preprocess_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """The resolved params that preprocessing depends on."""
        full = cls.resolve_params(params)
        return {k: full[k] for k in cls.preprocess_keys}

    @classmethod
    def weights_identity(cls, spec: EncoderSpec) -> dict[str, Any]:
        """What identifies the weights beyond ``spec`` (e.g. a local file's hash); for cache keys."""
        return {}

    @classmethod
    def starts_pretrained(cls, spec: EncoderSpec) -> bool:
        """Whether ``finetune`` mode starts from pretrained weights (else it is ``scratch``)."""
        return True

    # ----------------------------------------------------------------- instance helpers
    @property
    def device(self) -> torch.device:
        return self._device_probe.device

    @property
    def frozen(self) -> bool:
        return self.spec.mode == "frozen"

    def freeze_(self) -> None:
        """Turn off gradients of every parameter (frozen mode)."""
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Encoder:
        # a frozen encoder stays in eval mode (BatchNorm statistics, dropout off)
        return super().train(mode and not self.frozen)

    def _to_device(self, x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return x.to(self.device)
        if isinstance(x, dict):
            return {k: self._to_device(v) for k, v in x.items()}
        return x

    @staticmethod
    def finalize(
        pooled: torch.Tensor,
        tokens: torch.Tensor,
        levels: list[torch.Tensor],
        present: torch.Tensor,
        token_mask: torch.Tensor | None = None,
    ) -> ModalityFeatures:
        """Zero every tensor's absent rows (and padded tokens) and pack ModalityFeatures."""
        present = present.to(device=pooled.device, dtype=torch.bool)
        p2 = present[:, None]
        p3 = present[:, None, None]
        if token_mask is not None:
            token_mask = token_mask.to(device=tokens.device, dtype=torch.bool) & p2
            tokens = torch.where(
                token_mask[:, :, None],
                tokens,
                torch.zeros((), dtype=tokens.dtype, device=tokens.device),
            )
        zero = torch.zeros((), dtype=pooled.dtype, device=pooled.device)
        return ModalityFeatures(
            pooled=torch.where(p2, pooled, zero),
            tokens=torch.where(p3, tokens, zero),
            levels=[torch.where(p3, lv, zero) for lv in levels],
            present=present,
            token_mask=token_mask,
        )


def register_encoder(
    name: str,
    *,
    modality: str,
    modes: tuple[str, ...],
    space: dict | None = None,
    description: str = "",
) -> Callable[[type[Encoder]], type[Encoder]]:
    """Register an :class:`Encoder` subclass.

    Args:
        name: registry key, ``"<modality type>.<name>"`` by convention (e.g. ``"image.timm"``).
        modality: the modality type it reads (image / audio / text / tabular / timeseries).
        modes: the modes it supports (subset of frozen / finetune / scratch).
        space: default hyperparameter ranges: a list = categorical choices, ``{low, high[, log,
            step]}`` = int or float range. The key ``dim`` sets ``EncoderSpec.dim``; every other
            key is an entry of ``EncoderSpec.params``.
        description: one line shown by ``autofuse encoders``.
    """
    if modality not in MODALITY_TYPES:
        raise ValueError(f"encoder {name}: unknown modality type {modality!r}")
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"encoder {name}: bad modes {modes!r} (allowed: {MODES})")
    register = ENCODERS.register(
        name,
        modality=modality,
        modes=tuple(modes),
        space=dict(space or {}),
        description=description,
    )

    def deco(cls: type[Encoder]) -> type[Encoder]:
        if cls.input_kind not in INPUT_KINDS:
            raise ValueError(f"encoder {name}: input_kind {cls.input_kind!r} not in {INPUT_KINDS}")
        unknown = [k for k in (space or {}) if k != "dim" and k not in cls.defaults]
        if unknown:
            raise ValueError(
                f"encoder {name}: space keys {unknown} are not params of {cls.__name__}"
            )
        cls.registry_name = name
        return register(cls)

    return deco


def list_encoders(modality: str | None = None, mode: str | None = None) -> list[str]:
    """Registered encoder names (sorted), optionally only those for a modality type / mode."""
    out = []
    for entry in ENCODERS:
        if modality is not None and entry.meta["modality"] != modality:
            continue
        if mode is not None and mode not in entry.meta["modes"]:
            continue
        out.append(entry.name)
    return sorted(out)


def get_encoder_entry(name: str) -> Entry[type[Encoder]]:
    """The registry entry: ``.obj`` (the class) and ``.meta`` (modality, modes, space, description).

    Raises:
        ConfigError: unknown name (the message lists the known ones).
    """
    return ENCODERS.get(name)


def create_encoder(spec: EncoderSpec, state: dict | None = None) -> Encoder:
    """Build the encoder ``spec`` describes for a modality with fitted preprocessing ``state``.

    Frozen encoders are built under a fixed seed (0), so a frozen randomly initialised backbone is
    the same network in every process (its outputs come from the feature cache); their
    parameters do not require gradients.

    Raises:
        ConfigError: unknown encoder, mode not supported by it, or unknown params.
    """
    entry = get_encoder_entry(spec.name)
    # any encoder can be frozen once trained (stage 1 of a staged search): ``source`` says so
    trained_then_frozen = spec.mode == "frozen" and spec.source is not None
    if spec.mode not in entry.meta["modes"] and not trained_then_frozen:
        raise ConfigError(
            f"encoder {spec.name} does not support mode {spec.mode!r} (supports {entry.meta['modes']})"
        )
    cls = entry.obj
    cls.resolve_params(spec.params)  # fail early on unknown params
    if trained_then_frozen:
        # the architecture it was trained with (a trainable mode's, e.g. with its projection to
        # ``dim``); its weights come from the stage-1 run
        trained = "scratch" if "scratch" in entry.meta["modes"] else "finetune"
        enc = cls(spec.model_copy(update={"mode": trained, "source": None}), state or {})
        enc.spec = spec  # frozen from here on (eval mode, no gradients)
        enc.freeze_()
    elif spec.mode == "frozen":
        with _SEED_LOCK, torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            enc = cls(spec, state or {})
        enc.freeze_()
    else:
        enc = cls(spec, state or {})
    return enc


def segment_mean(x: torch.Tensor, mask: torch.Tensor | None, k: int) -> torch.Tensor:
    """Pool a padded sequence to ``k`` tokens: ``[B, L, D]`` -> ``[B, k, D]``.

    Like ``adaptive_avg_pool1d`` but over each row's real tokens only (``mask`` True), so short
    and long rows both fill all ``k`` segments (a row with no real token gives zeros).
    """
    B, L, _ = x.shape
    if mask is None:
        mask = torch.ones(B, L, dtype=torch.bool, device=x.device)
    mask = mask.bool()
    rank = torch.cumsum(mask.long(), dim=1) - 1  # [B, L] position among real tokens
    length = mask.sum(dim=1, keepdim=True)  # [B, 1]
    s = torch.arange(k, device=x.device)[None, :]  # [1, k]
    start = torch.div(s * length, k, rounding_mode="floor")  # [B, k]
    end = torch.div((s + 1) * length + k - 1, k, rounding_mode="floor")  # ceil
    member = (rank[:, :, None] >= start[:, None, :]) & (rank[:, :, None] < end[:, None, :])
    member = (member & mask[:, :, None]).to(x.dtype)  # [B, L, k]
    total = torch.einsum("blk,bld->bkd", member, x)  # [B, k, D]
    return total / member.sum(dim=1)[:, :, None].clamp_min(1.0)
