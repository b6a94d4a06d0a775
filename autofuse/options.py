"""SearchOptions: every setting of a search, its default and its check, in one place.

``autofuse.search()``, the worker processes, the study attribute that lets ``autofuse worker``
join from another machine, and the CLI's options (generated from the fields below) all read this
model, so a default is written once. A bad value is a :class:`~autofuse.errors.ConfigError`
naming the option.
"""

from __future__ import annotations

import re
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from autofuse.errors import ConfigError

SamplerName = Literal["tpe", "random", "gp", "qmc"]
PrunerName = Literal["median", "hyperband", "successive_halving", "none"]
SAMPLER_NAMES: tuple[str, ...] = get_args(SamplerName)
PRUNER_NAMES: tuple[str, ...] = get_args(PrunerName)

#: options stored with the study, so a worker joining it runs the same search
STORED = (
    "trials",
    "time_budget",
    "sampler",
    "pruner",
    "trial_timeout",
    "mlflow_uri",
    "heartbeat_interval",
    "grace_period",
    "max_retry",
    "max_faults",
    "amp",
    "checkpoint_every_s",
)


def _cli(flag: str, **extra: Any) -> dict[str, Any]:
    """Field metadata: the CLI flag of an option (``autofuse.cli`` builds click options from it)."""
    return {"cli": flag, **extra}


class SearchOptions(BaseModel):
    """How to run a search (see ``autofuse search --help``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    trials: int | None = Field(
        None,
        ge=1,
        description="Total finished trials wanted (default: the space's `trials`).",
        json_schema_extra=_cli("--trials"),
    )
    storage: str | None = Field(
        None,
        description="SQLAlchemy URL (default sqlite:///trials/autofuse.db).",
        json_schema_extra=_cli("--storage"),
    )
    space: str | None = Field(
        None,
        description="Search-space YAML file or bundled name (default: default).",
        json_schema_extra=_cli("--space"),
    )
    workdir: str | None = Field(
        None,
        description="Root of trials/ and reports/ (default: $AUTOFUSE_HOME or the cwd).",
        json_schema_extra=_cli("--workdir"),
    )
    sampler: SamplerName | None = Field(
        None,
        description="Optuna sampler (default: the space's; `random` to compare).",
        json_schema_extra=_cli("--sampler"),
    )
    pruner: PrunerName | None = Field(
        None,
        description="Optuna pruner (default: the space's).",
        json_schema_extra=_cli("--pruner"),
    )
    seed: int = Field(
        0,
        ge=0,
        description="Sampler seed (worker k uses seed + k).",
        json_schema_extra=_cli("--seed"),
    )
    baselines: bool | None = Field(
        None,
        description="Enqueue the hand-designed baselines first (default: the space's).",
        json_schema_extra=_cli("--baselines/--no-baselines"),
    )
    trial_timeout: float | None = Field(
        None,
        gt=0,
        description="Seconds per trial; a slower trial ends as pruned (timeout).",
        json_schema_extra=_cli("--trial-timeout"),
    )
    time_budget: float | None = Field(
        None,
        gt=0,
        description="Wall-clock budget of a staged search, e.g. 20m, 2h, 90s (split across "
        "the stages by the space's stages.budget: 25% unimodal, 55% fusion, 20% finalists).",
        json_schema_extra=_cli("--time-budget", text=True),
    )
    force: bool = Field(
        False,
        description="Resume even if the dataset or the space changed.",
        json_schema_extra=_cli("--force"),
    )
    progress: bool = Field(
        True,
        description="Show a progress display (--no-progress: none).",
        json_schema_extra=_cli("--no-progress"),
    )
    device: str | None = Field(
        None,
        description="cuda, cuda:N or cpu for one worker (default: CUDA when available).",
        json_schema_extra=_cli("--device"),
    )
    mlflow_uri: str | None = Field(
        None,
        description="MLflow tracking URI (default sqlite:///trials/mlflow.db; 'off' disables).",
        json_schema_extra=_cli("--mlflow-uri"),
    )
    heartbeat_interval: int = Field(
        30,
        ge=1,
        description="Seconds between worker heartbeats; a trial silent for 4x this is retried.",
        json_schema_extra=_cli("--heartbeat"),
    )
    grace_period: int | None = Field(
        None, ge=1, description="Seconds without a heartbeat before a trial is retried."
    )
    max_retry: int = Field(2, ge=0, description="Retries of a trial whose worker died.")
    workers: int | None = Field(
        None,
        ge=1,
        description="Worker processes (default: one per visible GPU, else 1).",
        json_schema_extra=_cli("--workers"),
    )
    devices: str | None = Field(
        None,
        description="Devices for the workers: cuda:0,cuda:1,... or cpu.",
        json_schema_extra=_cli("--devices"),
    )
    workers_per_device: int | None = Field(
        None,
        ge=1,
        description="Worker processes per device (default on CUDA: as many as fit in its memory "
        "by the study's measured peak per trial, 1 without history).",
        json_schema_extra=_cli("--workers-per-device"),
    )
    max_faults: int = Field(
        5,
        ge=1,
        description="Stop a worker after this many consecutive faulty trials.",
        json_schema_extra=_cli("--max-faults"),
    )
    amp: bool = Field(
        False,
        description="Mixed precision: bfloat16 autocast on a CUDA device that supports it.",
        json_schema_extra=_cli("--amp"),
    )
    report: bool = Field(True, description="Write the comparison report at the end.")
    checkpoint_every_s: float = Field(
        30.0,
        ge=0,
        description="Seconds between a running trial's epoch checkpoints (0: every epoch).",
        json_schema_extra=_cli("--checkpoint-every"),
    )

    @field_validator("time_budget", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        return parse_duration(v) if isinstance(v, str) else v

    @classmethod
    def parse(cls, base: SearchOptions | None = None, **changes: Any) -> SearchOptions:
        """``base`` (or the defaults) with ``changes``; a bad value or an unknown option is a
        ConfigError naming the option."""
        values = {**(base.model_dump() if base is not None else {}), **changes}
        try:
            return cls.model_validate(values)
        except ValidationError as e:
            raise ConfigError(_message(e)) from None

    @property
    def grace(self) -> int:
        """Seconds without a heartbeat after which a trial counts as stale."""
        return self.grace_period or 4 * self.heartbeat_interval

    def stored(self) -> dict[str, Any]:
        """What the study keeps of these options (for ``autofuse worker``)."""
        return self.model_dump(mode="json", include=set(STORED))

    @classmethod
    def from_stored(cls, stored: dict[str, Any] | None, **changes: Any) -> SearchOptions:
        """Options of a study created by ``autofuse search`` (older studies stored the total as
        ``n_total``); ``changes`` that are ``None`` keep the stored value."""
        values = {k: v for k, v in (stored or {}).items() if k in STORED}
        if "trials" not in values and (stored or {}).get("n_total") is not None:
            values["trials"] = stored["n_total"]
        values.update({k: v for k, v in changes.items() if v is not None})
        return cls.parse(**values)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``"20m"``, ``"2h"``, ``"1h30m"``, ``"90s"`` or ``"3600"`` (seconds) -> seconds."""
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhd])", t)
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s+", "", t):
        raise ValueError(f"{text!r} is not a duration (use e.g. 90s, 20m, 2h, 1h30m)")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def flag(name: str) -> str:
    """The CLI spelling of option ``name`` (``trial_timeout`` -> ``--trial-timeout``)."""
    extra = SearchOptions.model_fields[name].json_schema_extra or {}
    cli = extra.get("cli") if isinstance(extra, dict) else None
    return str(cli).split("/")[0] if cli else "--" + name.replace("_", "-")


def _message(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        name = str(err["loc"][0]) if err["loc"] else "?"
        where = flag(name) if name in SearchOptions.model_fields else name
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" {value!r}"
        msg = "unknown option" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{where}{shown}: {msg}")
    return "; ".join(parts)


__all__ = ["PRUNER_NAMES", "SAMPLER_NAMES", "STORED", "SearchOptions", "flag"]
