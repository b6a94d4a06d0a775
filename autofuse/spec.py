"""ArchitectureSpec: a versioned, JSON-serialisable description of one candidate model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from autofuse._util import atomic_write_text, json_text
from autofuse.encoders.base import EncoderSpec
from autofuse.errors import ConfigError

SPEC_VERSION = 2  # 2: EncoderSpec.source, TrainingSpec.encoder_lr_scale, FusionSpec.max_tokens
ARCHITECTURE_FORMAT = "autofuse.architecture"


class FusionSpec(BaseModel):
    """Which fusion method, at which fusion point, with which hyperparameters."""

    model_config = ConfigDict(extra="forbid")
    family: str
    method: str
    point: str = "late"
    params: dict[str, Any] = Field(default_factory=dict)
    #: token-level fusions see at most this many tokens per modality and level (the rest are
    #: pooled in order-preserving groups), so a 240-column table cannot blow up attention
    max_tokens: int | None = Field(default=None, ge=1)

    @property
    def name(self) -> str:
        return f"{self.family}.{self.method}"


class HeadSpec(BaseModel):
    """Width of the fused representation and the prediction head on top of it."""

    model_config = ConfigDict(extra="forbid")
    fused_dim: int = 128
    dropout: float = 0.1


class TrainingSpec(BaseModel):
    """Optimisation settings of one candidate."""

    model_config = ConfigDict(extra="forbid")
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    epochs: int = 10
    patience: int = 3
    modality_dropout: float = 0.0
    aux_weight: float = 0.1
    seed: int = 0
    #: the encoders train at ``lr * encoder_lr_scale`` (fine-tuning stage-1 encoders end to end)
    encoder_lr_scale: float = 1.0


class ArchitectureSpec(BaseModel):
    """Encoders per modality + fusion + head + training settings (``version`` for migrations)."""

    model_config = ConfigDict(extra="forbid")
    version: int = SPEC_VERSION
    encoders: dict[str, EncoderSpec]
    fusion: FusionSpec
    head: HeadSpec = Field(default_factory=HeadSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)

    def short(self) -> str:
        """One line for logs and leaderboards."""
        encs = ",".join(f"{m}={e.name}/{e.mode}" for m, e in self.encoders.items())
        return f"{self.fusion.name}@{self.fusion.point} [{encs}]"


def save_architecture(path: str | Path, spec: ArchitectureSpec, dataset_info: dict) -> Path:
    """Write ``architecture.json``: the spec plus what ``build_model`` needs about the data."""
    doc = {
        "format": ARCHITECTURE_FORMAT,
        "version": SPEC_VERSION,
        "spec": spec.model_dump(mode="json"),
        "dataset_info": dataset_info,
    }
    return atomic_write_text(path, json_text(doc))


def load_architecture(path: str | Path) -> tuple[ArchitectureSpec, dict]:
    """Read an ``architecture.json`` written by any spec version this release understands."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such architecture file") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if doc.get("format") != ARCHITECTURE_FORMAT:
        raise ConfigError(f"{path}: not an autofuse architecture file")
    if int(doc.get("version", 0)) > SPEC_VERSION:
        raise ConfigError(
            f"{path}: spec version {doc['version']} is newer than this autofuse understands"
        )
    return ArchitectureSpec.model_validate(doc["spec"]), doc["dataset_info"]
