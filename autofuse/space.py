"""Search spaces: YAML (validated by pydantic) -> define-by-run suggestions -> ArchitectureSpec.

The space is conditional: first the fusion family, then the method inside it, then the fusion
point the method accepts, then only that branch's hyperparameters. Every parameter name is
namespaced (``encoder_decoder.early.hidden``) so a categorical never changes its choices between
branches, which Optuna's samplers require.

The checker refuses, before a study exists, every value no trial could train with (an epoch count
below 1, a batch size below 1 or an empty list of them, a learning rate of 0 or less, a range
whose low is above its high, an empty list of choices, a dropout of 1 or more, a choice the
registry does not implement...), naming the key's path (``training.batch_size[0]``) in the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from autofuse.encoders import EncoderSpec, get_encoder_entry
from autofuse.errors import ConfigError
from autofuse.fusion import FUSIONS
from autofuse.options import PrunerName, SamplerName
from autofuse.spec import ArchitectureSpec, FusionSpec, HeadSpec, TrainingSpec

SPACES_DIR = Path(__file__).resolve().parent / "search_spaces"

Scalar = Union[int, float, str, bool]


class Range(BaseModel):
    """A numeric range: integers when ``low`` and ``high`` are both ints (and no float ``step``)."""

    model_config = ConfigDict(extra="forbid")
    low: int | float = Field(allow_inf_nan=False)
    high: int | float = Field(allow_inf_nan=False)
    log: bool = False
    step: int | float | None = Field(None, allow_inf_nan=False)

    def model_post_init(self, __context: Any) -> None:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is greater than high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log range needs low > 0 (got {self.low})")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"step must be greater than 0 (got {self.step})")

    @property
    def is_int(self) -> bool:
        return (
            isinstance(self.low, int)
            and isinstance(self.high, int)
            and not isinstance(self.step, float)
        )


def _value_kind(v: Any) -> str:
    if isinstance(v, (dict, Range)):
        return "range"
    return "list" if isinstance(v, list) else "scalar"


#: a space entry: a range (``{low, high, log, step}``), a list of choices or one fixed value;
#: the shape decides the branch, so an error names only what is wrong with that shape
Value = Annotated[
    Union[
        Annotated[Range, Tag("range")],
        Annotated[list[Scalar], Tag("list")],
        Annotated[Scalar, Tag("scalar")],
    ],
    Discriminator(_value_kind),
]


class SpaceValueError(ValueError):
    """A bad value under the key being validated: ``sub`` is the rest of its path (``[0]``,
    ``.low``), so the message names the whole path (``training.batch_size[0]``)."""

    def __init__(self, sub: str, message: str) -> None:
        super().__init__(f"{sub}: {message}" if sub else message)
        self.sub, self.message = sub, message


@dataclass(frozen=True)
class Rule:
    """What a numeric space entry may hold: ``kind`` (int or float), bounds, and why."""

    kind: type
    low: float | None = None
    low_open: bool = False  # value > low (else >=)
    high: float | None = None
    high_open: bool = False  # value < high (else <=)
    why: str = ""

    def problem(self, v: float) -> str | None:
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return self.why
        if self.high is not None and (v >= self.high if self.high_open else v > self.high):
            return self.why
        return None


#: the training settings a trial needs to train at all
TRAINING_RULES: dict[str, Rule] = {
    "lr": Rule(float, 0, True, why="a learning rate must be greater than 0"),
    "weight_decay": Rule(float, 0, why="a weight decay must be 0 or more"),
    "batch_size": Rule(int, 1, why="a batch size must be at least 1"),
    "epochs": Rule(int, 1, why="a trial trains at least 1 epoch"),
    "patience": Rule(int, 1, why="patience must be at least 1 (0 would stop after 1 epoch)"),
    "modality_dropout": Rule(float, 0, False, 1, True, why="a dropout rate is in [0, 1)"),
    "aux_weight": Rule(float, 0, why="an auxiliary-loss weight must be 0 or more"),
    "fused_dim": Rule(int, 1, why="a width must be at least 1"),
    "head_dropout": Rule(float, 0, False, 1, True, why="a dropout rate is in [0, 1)"),
}


def _number(v: Any, rule: Rule, sub: str) -> int | float:
    """One value of a numeric entry, checked against ``rule`` (a number written as text, e.g.
    YAML's ``1e-3``, is read as that number)."""
    if isinstance(v, str):
        try:
            v = float(v.strip())
        except ValueError:
            raise SpaceValueError(sub, f"{v!r} is not a number") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise SpaceValueError(sub, f"{v!r} is not a number")
    if not math.isfinite(v):
        raise SpaceValueError(sub, f"{v} is not a finite number")
    if rule.kind is int:
        if isinstance(v, float) and not v.is_integer():
            raise SpaceValueError(sub, f"{v} is not a whole number")
        v = int(v)
    problem = rule.problem(v)
    if problem:
        raise SpaceValueError(sub, f"got {v}; {problem}")
    return v


def conform(value: Any, rule: Rule | None, sub: str = "") -> Any:
    """``value`` (a range, a list of choices or a scalar) checked against ``rule`` (``None``:
    only its shape: no empty list), with numbers written as text read as numbers."""
    if isinstance(value, list) and not value:
        raise SpaceValueError(sub, "an empty list of choices (give at least one value)")
    if rule is None:
        return value
    if isinstance(value, Range):
        low = _number(value.low, rule, f"{sub}.low")
        high = _number(value.high, rule, f"{sub}.high")
        if rule.kind is int and not value.is_int:
            raise SpaceValueError(sub, "takes whole numbers: give low, high and step as integers")
        if rule.kind is float:  # a range of a real-valued setting is sampled as floats
            low, high = float(low), float(high)
        return value.model_copy(update={"low": low, "high": high})
    if isinstance(value, list):
        return [_number(v, rule, f"{sub}[{i}]") for i, v in enumerate(value)]
    return _number(value, rule, sub)


def _nonempty_choices(params: dict[str, Any]) -> dict[str, Any]:
    for name, value in params.items():
        conform(value, None, f".{name}")
    return params


class MethodSpace(BaseModel):
    model_config = ConfigDict(extra="forbid")
    points: list[str] | None = None
    params: dict[str, Value] = Field(default_factory=dict)

    @field_validator("points")
    @classmethod
    def _points(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else conform(v, None)

    @field_validator("params")
    @classmethod
    def _params(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _nonempty_choices(v)


class EncoderChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    modes: list[Literal["frozen", "finetune", "scratch"]] | None = None
    params: dict[str, Value] = Field(default_factory=dict)

    @field_validator("modes")
    @classmethod
    def _modes(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else conform(v, None)

    @field_validator("params")
    @classmethod
    def _params(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _nonempty_choices(v)


class TrainingSpace(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lr: Value = Range(low=3e-4, high=3e-3, log=True)
    weight_decay: Value = Range(low=1e-6, high=1e-2, log=True)
    batch_size: Value = [32, 64]
    epochs: Value = 8
    patience: Value = 3
    modality_dropout: Value = Range(low=0.0, high=0.3)
    aux_weight: Value = Range(low=0.01, high=1.0, log=True)
    fused_dim: Value = [64, 128]
    head_dropout: Value = Range(low=0.0, high=0.3)

    @field_validator("*")
    @classmethod
    def _trainable(cls, v: Any, info: ValidationInfo) -> Any:
        return conform(v, TRAINING_RULES.get(str(info.field_name)))


class SamplerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: SamplerName = "tpe"
    multivariate: bool = True
    group: bool = True
    n_startup_trials: int = Field(8, ge=0)


class PrunerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: PrunerName = "median"
    n_startup_trials: int = Field(4, ge=0)
    n_warmup_steps: int = Field(2, ge=0)


class BudgetSplit(BaseModel):
    """Shares of ``--time-budget`` per stage (AutoGluon-style: one wall-clock budget)."""

    model_config = ConfigDict(extra="forbid")
    unimodal: float = Field(0.25, ge=0, allow_inf_nan=False)
    fusion: float = Field(0.55, ge=0, allow_inf_nan=False)
    finalists: float = Field(0.20, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _some_share(self) -> BudgetSplit:
        if self.unimodal + self.fusion + self.finalists <= 0:
            raise ValueError("the stages' shares of the time budget are all 0")
        return self


class StagesConfig(BaseModel):
    """The staged search (``stages:`` in a space file)."""

    model_config = ConfigDict(extra="forbid")
    #: stage 1 unimodal encoders, stage 2 fusion search on their features, stage 3 finalists;
    #: off: every candidate trains its own encoders (the single-stage search)
    enabled: bool = True
    #: share of the training rows the stage-1 encoders do NOT see: stage-2 fusion heads train
    #: on these rows, whose features are honest (not memorised by the encoder)
    fusion_rows: float = Field(0.4, gt=0, lt=1)
    #: stage 2 ranks a design by K-fold cross-validation over the rows its head may learn from
    #: (the fusion rows and the validation rows; stratified, grouped by the dataset's group
    #: column): the trial's value is the mean over folds, a selection estimate. 1: trained on the
    #: fusion rows and ranked on the validation split alone (the single-split selection)
    folds: int = Field(5, ge=1, le=20)
    #: stage 1: each encoder choice trains to early stopping on the validation split (this
    #: patience), for at most ``unimodal_epochs`` epochs, within its share of the stage's time
    unimodal_epochs: int = Field(60, ge=1)
    unimodal_patience: int = Field(6, ge=1)
    #: stage 1 under ``--time-budget``: while the stage has time left, up to this many more runs
    #: per trainable encoder choice tune its learning rate and its own settings (a small TPE
    #: search per choice, :mod:`autofuse.tuning`); stage 2 uses each choice's best run. 0: off
    tune: int = Field(6, ge=0)
    #: search the modality subset (``keep.<modality>``) in stage 2
    subset: bool = True
    #: token-level fusions see at most this many tokens per modality
    max_tokens: int = Field(16, ge=1)
    #: stage 3: the best designs fine-tuned end to end, each with this many seeds
    finalists: int = Field(3, ge=0)
    seeds: int = Field(3, ge=1)
    #: stage 3: encoders learn at lr times this
    finetune_lr_scale: float = Field(0.1, gt=0)
    #: stage 3: at most this many epochs per finalist (it starts from trained stage-1 encoders
    #: and a trained stage-2 fusion, so a short fine-tune suffices; this bounds the stage's cost
    #: when no --time-budget does)
    finetune_epochs: int = Field(5, ge=1)
    #: stage 3: a greedy ensemble of the finalists' models when it beats the best one
    ensemble: bool = True
    budget: BudgetSplit = Field(default_factory=BudgetSplit)


class SearchSpace(BaseModel):
    """A search space file (``search_spaces/*.yaml``)."""

    model_config = ConfigDict(extra="forbid")
    name: str = "custom"
    description: str = ""
    fusion: dict[str, dict[str, MethodSpace | None]]
    encoders: dict[Literal["image", "audio", "text", "tabular", "timeseries"], list[EncoderChoice]]
    training: TrainingSpace = Field(default_factory=TrainingSpace)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    baselines: bool | list[str] = True
    #: every family in the space gets at least this many trials (enqueued after the baselines),
    #: so no family is judged on zero or one sample before the sampler concentrates
    coverage: int = Field(default=2, ge=0)
    trials: int = Field(default=20, ge=1)
    stages: StagesConfig = Field(default_factory=StagesConfig)

    @field_validator("fusion")
    @classmethod
    def _nonempty(cls, v: dict) -> dict:
        if not v:
            raise ValueError("at least one fusion family is needed")
        return v

    @field_validator("encoders")
    @classmethod
    def _some_encoder(cls, v: dict) -> dict:
        for mtype, choices in v.items():
            if not choices:
                raise SpaceValueError(f".{mtype}", "an empty list of encoders (give at least one)")
        return v

    # ---- resolution against the registries -------------------------------------------------
    def methods(self) -> dict[str, dict[str, dict]]:
        """``{family: {method: {"points": [...], "params": {...}}}}`` merged with registry defaults."""
        out: dict[str, dict[str, dict]] = {}
        for family, methods in self.fusion.items():
            out[family] = {}
            for method, ms in methods.items():
                entry = FUSIONS.get(f"{family}.{method}")
                ms = ms or MethodSpace()
                points = list(ms.points or entry.meta["points"])
                params = {**entry.meta["space"], **ms.params}
                out[family][method] = {
                    "points": points,
                    "params": params,
                    "max_modalities": entry.meta.get("max_modalities"),
                    "aux_loss": entry.meta.get("aux_loss", False),
                }
        return out

    def encoder_choices(self, modality_type: str) -> list[dict]:
        """Encoder choices for one modality type, merged with the registry defaults."""
        out = []
        for ch in self.encoders.get(modality_type, []):
            entry = get_encoder_entry(ch.name)
            modes = list(ch.modes or entry.meta["modes"])
            out.append(
                {"name": ch.name, "modes": modes, "params": {**entry.meta["space"], **ch.params}}
            )
        return out


def _check(space: SearchSpace, source: str) -> None:
    """Reject unknown names and impossible combinations, naming the key at fault."""
    for family, methods in space.fusion.items():
        if not methods:
            raise ConfigError(f"{source}: fusion.{family}: no methods listed")
        for method, ms in methods.items():
            key = f"fusion.{family}.{method}"
            if f"{family}.{method}" not in FUSIONS:
                known = ", ".join(sorted(FUSIONS.names()))
                raise ConfigError(f"{source}: {key}: unknown fusion method (known: {known})")
            entry = FUSIONS.get(f"{family}.{method}")
            if ms and ms.points:
                bad = [p for p in ms.points if p not in entry.meta["points"]]
                if bad:
                    raise ConfigError(
                        f"{source}: {key}.points: {bad} not accepted "
                        f"(accepts {list(entry.meta['points'])})"
                    )
            if ms:
                for p in ms.params:
                    if p not in entry.meta["space"]:
                        raise ConfigError(
                            f"{source}: {key}.params.{p}: unknown hyperparameter "
                            f"(known: {', '.join(entry.meta['space'])})"
                        )
                ms.params.update(_check_params(ms.params, entry.meta["space"], source, key))
    for mtype, choices in space.encoders.items():
        for i, ch in enumerate(choices):
            key = f"encoders.{mtype}[{i}]"
            try:
                entry = get_encoder_entry(ch.name)
            except ConfigError as e:
                raise ConfigError(f"{source}: {key}.name: {e}") from None
            if entry.meta["modality"] != mtype:
                raise ConfigError(
                    f"{source}: {key}.name: {ch.name} encodes {entry.meta['modality']}, not {mtype}"
                )
            if ch.modes:
                bad = [m for m in ch.modes if m not in entry.meta["modes"]]
                if bad:
                    raise ConfigError(
                        f"{source}: {key}.modes: {bad} not supported by {ch.name} "
                        f"(supports {list(entry.meta['modes'])})"
                    )
            ch.params.update(_check_params(ch.params, entry.meta["space"], source, key))


def _registry_values(default: Any) -> list[Any]:
    """The values a registry's default space entry holds (a range's bounds, a list, a scalar)."""
    if isinstance(default, Range):
        return [default.low, default.high]
    if isinstance(default, dict):
        return [default.get("low"), default.get("high")]
    return list(default) if isinstance(default, (list, tuple)) else [default]


def param_rule(name: str, default: Any) -> Rule | tuple[str, ...] | None:
    """What a hyperparameter of a fusion method or encoder may hold, from its registry default:
    a :class:`Rule` for numbers (whole numbers from 1 for sizes such as ``hidden``, a dropout
    in [0, 1), positive where the default is), the implemented choices for names and flags,
    None when nothing can be said."""
    values = _registry_values(default)
    if values and all(isinstance(v, (str, bool)) for v in values):
        return tuple(dict.fromkeys(values))
    if not values or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    ):
        return None
    whole = all(isinstance(v, int) for v in values) and not (
        isinstance(default, dict) and isinstance(default.get("step"), float)
    )
    low = min(values)
    if name.endswith("dropout"):
        return Rule(float, 0, False, 1, True, why="a dropout rate is in [0, 1)")
    if whole:
        at_least = 1 if low >= 1 else 0
        return Rule(int, at_least, why=f"{name} is a whole number of at least {at_least}")
    if low > 0:
        return Rule(float, 0, True, why=f"{name} must be greater than 0")
    return Rule(float, 0, why=f"{name} must be 0 or more") if low >= 0 else None


def _check_params(params: dict[str, Any], registry: dict[str, Any], source: str, key: str) -> dict:
    """A method's or an encoder's hyperparameters checked against what its registry entry
    implements; values written as text are read as numbers."""
    out = {}
    for p, value in params.items():
        if p not in registry:
            continue  # an encoder option the registry does not search (e.g. a timm model name)
        rule = param_rule(p, registry[p])
        where = f"{source}: {key}.params.{p}"
        if isinstance(rule, tuple):
            choices = value if isinstance(value, list) else [value]
            if isinstance(value, Range):
                raise ConfigError(f"{where}: takes one of {list(rule)}, not a range")
            bad = [c for c in choices if c not in rule]
            if bad:
                raise ConfigError(f"{where}: {bad} not implemented (choose from {list(rule)})")
            out[p] = value
            continue
        try:
            out[p] = conform(value, rule)
        except SpaceValueError as e:
            raise ConfigError(f"{where}{e.sub}: {e.message}") from None
    return out


def load_space(name_or_path: str | Path | None = None) -> SearchSpace:
    """Load a space by file path or by name of a bundled space (``fast``, ``default``, ...)."""
    if name_or_path is None:
        name_or_path = "default"
    p = Path(name_or_path)
    if not p.exists():
        bundled = SPACES_DIR / f"{name_or_path}.yaml"
        if not bundled.exists():
            known = ", ".join(sorted(x.stem for x in SPACES_DIR.glob("*.yaml")))
            raise ConfigError(
                f"search space {name_or_path!r}: no such file or bundled space (bundled: {known})"
            )
        p = bundled
    raw = _read_yaml(p)
    current, seen = p, {p.resolve()}
    while "extends" in raw:
        # `extends: NAME|FILE` takes the base space and replaces its top-level keys with ours;
        # a relative FILE is resolved next to the file that names it
        base_ref = raw.pop("extends")
        base = Path(base_ref) if Path(base_ref).is_absolute() else current.parent / str(base_ref)
        if not base.exists():
            base = SPACES_DIR / f"{base_ref}.yaml"
        if not base.exists() or base.resolve() in seen:
            raise ConfigError(
                f"{p}: extends: {base_ref!r} is not a space file or bundled space "
                "(or extends itself)"
            )
        seen.add(base.resolve())
        current = base
        raw = {**_read_yaml(base), **raw}
    try:
        space = SearchSpace.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{p}: {space_errors(e)}") from None
    _check(space, str(p))
    return space


#: parts of a pydantic error location that name a union branch, not a key of the file
_LOC_PREFIXES = ("Range", "list[", "function-")
_LOC_TAGS = {"range", "list", "scalar", "int", "float", "str", "bool"}
_SCALARS = {"int", "float", "str", "bool"}


def space_errors(e: ValidationError) -> str:
    """A space's validation errors as ``key.path[i]: why``, one per key at fault."""
    msgs = []
    for err in e.errors():
        parts = [
            x
            for x in err["loc"]
            if not (isinstance(x, str) and (x in _LOC_TAGS or x.startswith(_LOC_PREFIXES)))
        ]
        loc = ""
        for x in parts:
            loc += f"[{x}]" if isinstance(x, int) else (f".{x}" if loc else str(x))
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, SpaceValueError):
            msgs.append(f"{loc}{cause.sub}: {cause.message}")
        elif err["type"] == "value_error" and cause is not None:
            msgs.append(f"{loc}: {cause}")
        elif err["type"] == "union_tag_invalid" or (
            err["type"].endswith("_type") and err.get("input") is None
        ):
            msgs.append(f"{loc}: no value given")
        elif _SCALARS & set(map(str, err["loc"][-1:])):  # none of a scalar's types fits
            msgs.append(f"{loc}: {err.get('input')!r} is not a number, a name or true/false")
        else:
            msgs.append(f"{loc}: {err['msg']}")
    return "; ".join(dict.fromkeys(msgs))


def _read_yaml(p: Path) -> dict:
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        why = getattr(e, "problem", None) or str(e).strip().splitlines()[0]
        raise ConfigError(f"{p}{where}: not valid YAML ({why})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return raw


# ---- define-by-run ----------------------------------------------------------------------------


def suggest_value(trial, name: str, value: Any) -> Any:
    """Ask Optuna for one value: list -> categorical, Range -> int/float, scalar -> fixed."""
    if isinstance(value, dict):
        value = Range.model_validate(value)
    if isinstance(value, Range):
        if value.low == value.high:
            return value.low
        if value.is_int:
            return trial.suggest_int(
                name, int(value.low), int(value.high), log=value.log, step=int(value.step or 1)
            )
        return trial.suggest_float(
            name, float(value.low), float(value.high), log=value.log, step=value.step
        )
    if isinstance(value, list):
        if len(value) == 1:
            return value[0]
        return trial.suggest_categorical(name, value)
    return value


def valid_methods(space: SearchSpace, n_modalities: int) -> dict[str, dict[str, dict]]:
    """Drop methods capped below the dataset's number of modalities (and empty families)."""
    out = {}
    for fam, methods in space.methods().items():
        ok = {
            m: v
            for m, v in methods.items()
            if v["max_modalities"] is None or n_modalities <= v["max_modalities"]
        }
        if ok:
            out[fam] = ok
    if not out:
        raise ConfigError(f"no fusion method in the space supports {n_modalities} modalities")
    return out


def choice_names(space: SearchSpace, n_modalities: int) -> tuple[str, dict[str, str]]:
    """The Optuna names of the family choice and of each family's method choice for
    ``n_modalities`` modalities. A full set keeps the plain name (``family``,
    ``<family>.method``); a set that methods capped below ``n_modalities`` shrank (a modality
    subset of stage 2 changes ``n_modalities`` from trial to trial) gets a name of its own, as
    Optuna's categorical distribution must keep one set of choices under one name."""
    full = {f: list(m) for f, m in space.methods().items() if m}
    valid = valid_methods(space, n_modalities)
    fam = "family" if list(valid) == list(full) else f"family[{'|'.join(valid)}]"
    methods = {
        f: f"{f}.method" if list(m) == full[f] else f"{f}.method[{'|'.join(m)}]"
        for f, m in valid.items()
    }
    return fam, methods


def _suggest_fusion(trial, space: SearchSpace, n_modalities: int) -> tuple[FusionSpec, dict]:
    """family -> method -> point -> the branch's hyperparameters; also the branch."""
    methods = valid_methods(space, n_modalities)
    fam_name, method_names = choice_names(space, n_modalities)
    family = suggest_value(trial, fam_name, list(methods))
    method = suggest_value(trial, method_names[family], list(methods[family]))
    branch = methods[family][method]
    ns = f"{family}.{method}"
    point = suggest_value(trial, f"{ns}.point", branch["points"])
    fparams = {p: suggest_value(trial, f"{ns}.{p}", v) for p, v in branch["params"].items()}
    return FusionSpec(family=family, method=method, point=point, params=fparams), branch


def _suggest_training(
    trial, space: SearchSpace, fusion: FusionSpec, branch: dict, n_modalities: int
) -> tuple[TrainingSpec, HeadSpec]:
    t = space.training
    training = TrainingSpec(
        lr=suggest_value(trial, "train.lr", t.lr),
        weight_decay=suggest_value(trial, "train.weight_decay", t.weight_decay),
        batch_size=suggest_value(trial, "train.batch_size", t.batch_size),
        epochs=suggest_value(trial, "train.epochs", t.epochs),
        patience=suggest_value(trial, "train.patience", t.patience),
        # robustness to missing modalities only means something with several modalities
        modality_dropout=(
            suggest_value(trial, "train.modality_dropout", t.modality_dropout)
            if n_modalities > 1
            else 0.0
        ),
        # the auxiliary-loss weight is a parameter only of methods that have an auxiliary loss
        aux_weight=(
            suggest_value(trial, f"{fusion.name}.aux_weight", t.aux_weight)
            if branch["aux_loss"]
            else 0.0
        ),
        seed=trial.number,
    )
    head = HeadSpec(
        fused_dim=suggest_value(trial, "head.fused_dim", t.fused_dim),
        dropout=suggest_value(trial, "head.dropout", t.head_dropout),
    )
    return training, head


def suggest_spec(trial, space: SearchSpace, modalities: dict[str, str]) -> ArchitectureSpec:
    """Sample one ArchitectureSpec (define-by-run) for a dataset's ``{modality: type}``: the
    single-stage search, where every candidate trains its encoders."""
    fusion, branch = _suggest_fusion(trial, space, len(modalities))
    encoders = {}
    for m, mtype in modalities.items():
        choices = space.encoder_choices(mtype)
        if not choices:
            raise ConfigError(f"search space has no encoder for modality {m!r} of type {mtype}")
        by_name = {c["name"]: c for c in choices}
        ename = suggest_value(trial, f"enc.{m}.name", list(by_name))
        ch = by_name[ename]
        mode = suggest_value(trial, f"enc.{m}.{ename}.mode", ch["modes"])
        params = {
            p: suggest_value(trial, f"enc.{m}.{ename}.{p}", v) for p, v in ch["params"].items()
        }
        dim = params.pop("dim", 64)
        encoders[m] = EncoderSpec(name=ename, mode=mode, dim=int(dim), params=params)
    training, head = _suggest_training(trial, space, fusion, branch, len(modalities))
    return ArchitectureSpec(encoders=encoders, fusion=fusion, head=head, training=training)


def suggest_fusion_spec(
    trial,
    space: SearchSpace,
    choices: dict[str, dict[str, EncoderSpec]],
    fallback: str,
) -> ArchitectureSpec:
    """Stage 2 of a staged search: one conditional space over the fusion design, each
    modality's encoder (a choice among the stage-1 encoders, by label) and the modality subset
    (``keep.<modality>``; when nothing is kept, ``fallback`` is). Candidates train only the
    fusion and the head, on the stage-1 encoders' stored features."""
    kept = [
        m
        for m in choices
        if not space.stages.subset
        or len(choices) == 1
        or suggest_value(trial, f"keep.{m}", [True, False])
    ] or [fallback]
    fusion, branch = _suggest_fusion(trial, space, len(kept))
    encoders = {}
    for m in kept:
        label = suggest_value(trial, f"enc.{m}", sorted(choices[m]))
        encoders[m] = choices[m][label]
    training, head = _suggest_training(trial, space, fusion, branch, len(kept))
    fusion.max_tokens = space.stages.max_tokens
    return ArchitectureSpec(encoders=encoders, fusion=fusion, head=head, training=training)


def default_value(value: Any) -> Any:
    """The value a fixed (not searched) run takes from a space entry: a list's first choice, a
    range's middle (geometric for log ranges), a scalar itself."""
    if isinstance(value, dict):
        value = Range.model_validate(value)
    if isinstance(value, Range):
        lo, hi = float(value.low), float(value.high)
        mid = (lo * hi) ** 0.5 if value.log else (lo + hi) / 2
        return int(round(mid)) if value.is_int else mid
    if isinstance(value, list):
        return value[0]
    return value


def unimodal_specs(
    space: SearchSpace, modalities: dict[str, str]
) -> list[tuple[str, ArchitectureSpec]]:
    """Stage 1 of a staged search: one unimodal model per modality and encoder choice (each mode
    the space allows), with the choice's default settings and a plain linear head, trained to
    early stopping (``stages.unimodal_epochs``, ``stages.unimodal_patience``)."""
    t = space.training
    training = TrainingSpec(
        lr=default_value(t.lr),
        weight_decay=default_value(t.weight_decay),
        batch_size=default_value(t.batch_size),
        epochs=space.stages.unimodal_epochs,
        patience=space.stages.unimodal_patience,
        aux_weight=0.0,
        seed=0,
    )
    head = HeadSpec(fused_dim=default_value(t.fused_dim), dropout=default_value(t.head_dropout))
    fusion = FusionSpec(
        family="encoder_decoder", method="decision", point="late", params={"combine": "mean"}
    )
    out = []
    for m, mtype in modalities.items():
        for ch in space.encoder_choices(mtype):
            params = {p: default_value(v) for p, v in ch["params"].items()}
            dim = int(params.pop("dim", 64))
            cls = get_encoder_entry(ch["name"]).obj
            for mode in ch["modes"]:
                enc = EncoderSpec(name=ch["name"], mode=mode, dim=dim, params=params)
                if mode == "finetune" and "scratch" in ch["modes"]:
                    if not cls.starts_pretrained(enc):
                        continue  # without pretrained weights it is the scratch run again
                spec = ArchitectureSpec(
                    encoders={m: enc}, fusion=fusion, head=head, training=training
                )
                out.append((m, spec))

    # frozen encoders first (they only fit a head), then small trainable ones before timm
    # models, modalities in turn: under a time budget each modality gets an encoder early, and
    # the time cheap runs leave over goes to the costly ones
    def cost(item: tuple[str, ArchitectureSpec]) -> tuple[bool, bool]:
        e = item[1].encoders[item[0]]
        return (e.mode != "frozen", "timm" in e.name)

    return sorted(out, key=cost)


# ---- baselines ---------------------------------------------------------------------------------

#: Hand-designed baselines enqueued as the first trials: name -> (family, method, point, params).
BASELINES: dict[str, tuple[str, str, str, dict]] = {
    "late_fusion": ("encoder_decoder", "decision", "late", {"combine": "mean"}),
    "early_concat": ("encoder_decoder", "early", "early", {}),
    "tensor_fusion": ("constraint", "tensor", "late", {}),
    "low_rank_tensor": ("constraint", "low_rank_tensor", "late", {}),
    "cross_attention": ("attention", "inter_cross", "late", {}),
}


def baseline_params(space: SearchSpace, modalities: dict[str, str]) -> list[tuple[str, dict]]:
    """Fixed Optuna params for each baseline the space can express (unfixed ones are sampled)."""
    if space.baselines is False:
        return []
    wanted = list(BASELINES) if space.baselines is True else list(space.baselines)
    methods = valid_methods(space, len(modalities))
    fam_name, method_names = choice_names(space, len(modalities))
    out = []
    for name in wanted:
        if name not in BASELINES:
            raise ConfigError(
                f"baselines: unknown baseline {name!r} (known: {', '.join(BASELINES)})"
            )
        family, method, point, extra = BASELINES[name]
        if method not in methods.get(family, {}):
            continue
        ns = f"{family}.{method}"
        params: dict[str, Any] = {
            fam_name: family,
            method_names[family]: method,
            f"{ns}.point": point,
        }
        params.update({f"{ns}.{k}": v for k, v in extra.items()})
        # baselines use the first (cheapest) encoder choice of each modality in its first mode
        for m, mtype in modalities.items():
            ch = space.encoder_choices(mtype)
            if ch:
                params[f"enc.{m}.name"] = ch[0]["name"]
                params[f"enc.{m}.{ch[0]['name']}.mode"] = ch[0]["modes"][0]
        out.append((name, params))
    return out


def coverage_params(
    space: SearchSpace, modalities: dict[str, str], existing: list[dict], budget: int
) -> list[dict]:
    """``{"family": f}`` trials to enqueue so every family reaches ``space.coverage`` trials.

    Args:
        existing: params of the study's trials so far (any state, enqueued ones included).
        budget: at most this many are returned (the trials the study still has room for).
    """
    counts = {f: 0 for f in valid_methods(space, len(modalities))}
    fam_name, _ = choice_names(space, len(modalities))
    for params in existing:
        fam = params.get("family") or params.get(fam_name)
        if fam in counts:
            counts[fam] += 1
    out: list[dict] = []
    for _ in range(space.coverage):
        for fam in counts:  # round-robin so a small budget still spreads over the families
            if counts[fam] < space.coverage and len(out) < budget:
                out.append({fam_name: fam})
                counts[fam] += 1
    return out


def describe(space: SearchSpace) -> dict:
    """The resolved space as plain data (for ``autofuse space show`` and the study record)."""

    def plain(v):
        return v.model_dump() if isinstance(v, Range) else v

    return {
        "name": space.name,
        "fusion": {
            f: {
                m: {
                    "points": b["points"],
                    "params": {k: plain(v) for k, v in b["params"].items()},
                    "max_modalities": b["max_modalities"],
                    "aux_loss": b["aux_loss"],
                }
                for m, b in ms.items()
            }
            for f, ms in space.methods().items()
        },
        "encoders": {
            t: [
                {**c, "params": {k: plain(v) for k, v in c["params"].items()}}
                for c in space.encoder_choices(t)
            ]
            for t in space.encoders
        },
        "training": {k: plain(v) for k, v in space.training.model_dump().items()},
        "sampler": space.sampler.model_dump(),
        "pruner": space.pruner.model_dump(),
        "baselines": space.baselines,
        "coverage": space.coverage,
        "trials": space.trials,
        "stages": space.stages.model_dump(),
    }
