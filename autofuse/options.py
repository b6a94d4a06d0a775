"""SearchOptions: every setting of a search, its default and its check, in one place.

``autofuse.search()``, the worker processes, the study attribute that lets ``autofuse worker``
join from another machine, and the CLI's options (generated from the fields below) all read this
model, so a default is written once. A bad value is a :class:`~autofuse.errors.ConfigError`
naming the option, raised before anything is written: numbers out of range, a device this
machine does not have (:func:`device_problem`), a storage URL that cannot work
(:func:`storage_problem`), an MLflow URI that is not one (:func:`mlflow_uri_problem`), a work
directory that is a file or read-only. The same checks serve the other commands' options
(:func:`check_device`, :func:`check_storage`, :func:`check_mlflow_uri`, :func:`check_workdir`).
Secrets in URLs are masked in every message.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from autofuse._util import (
    folder_problem,
    mask_url,
    plain_mysql_urls_use_pymysql,
    workdir_problem,
)
from autofuse.errors import ConfigError

# storage_problem asks SQLAlchemy for a URL's driver: a plain mysql:// URL means PyMySQL here too
plain_mysql_urls_use_pymysql()

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
    "artifacts",
)


#: seeds are numpy seeds (below 2**32); worker k uses seed + k
MAX_SEED = 2**31 - 1
#: a heartbeat more than a day apart would leave a dead worker's trial unnoticed for days
MAX_HEARTBEAT_S = 86_400


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
        le=MAX_SEED,
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
        allow_inf_nan=False,
        description="Seconds per trial; a slower trial ends as pruned (timeout).",
        json_schema_extra=_cli("--trial-timeout"),
    )
    time_budget: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
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
        le=MAX_HEARTBEAT_S,
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
    refit_full: bool = Field(
        False,
        description="After the winner is chosen, retrain it (each member of an ensemble) on "
        "train + val for the epoch counts selection found and export it to "
        "trials/<study>/best_refit (its test score goes next to the selected model's).",
        json_schema_extra=_cli("--refit-full"),
    )
    checkpoint_every_s: float = Field(
        30.0,
        ge=0,
        allow_inf_nan=False,
        description="Seconds between a running trial's epoch checkpoints (0: every epoch).",
        json_schema_extra=_cli("--checkpoint-every"),
    )

    artifacts: str | None = Field(
        None,
        description="Artifact store for checkpoints, stage-1 encoders and the best model, shared "
        "by workers without a shared disk: mlflow-artifacts://HOST:PORT/PATH, s3://, gs://, "
        "file:///PATH or a folder (default: the local disk only).",
        json_schema_extra=_cli("--artifacts"),
    )

    @field_validator("time_budget", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        return parse_duration(v) if isinstance(v, str) else v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        return None if v is None else _ok(v.strip(), device_problem(v))

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: str | None) -> str | None:
        return None if v is None else _ok(v, devices_problem(v))

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str | None) -> str | None:
        return None if v is None else _ok(v, storage_problem(v))

    @field_validator("mlflow_uri")
    @classmethod
    def _mlflow_uri(cls, v: str | None) -> str | None:
        return None if v is None else _ok(v, mlflow_uri_problem(v))

    @field_validator("artifacts")
    @classmethod
    def _artifacts(cls, v: str | None) -> str | None:
        return None if v is None else artifacts_uri(v)

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, v: str | None) -> str | None:
        return None if v is None else _ok(v, workdir_problem(v))

    @model_validator(mode="after")
    def _grace_after_heartbeat(self) -> SearchOptions:
        if self.grace_period is not None and self.grace_period <= self.heartbeat_interval:
            raise ValueError(
                f"grace_period ({self.grace_period} s) must be longer than the heartbeat "
                f"interval ({self.heartbeat_interval} s), else every running trial looks stale"
            )
        return self

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
        name = str(err["loc"][0]) if err["loc"] else ""
        where = flag(name) if name in SearchOptions.model_fields else name
        value = err.get("input")
        shown = "" if isinstance(value, dict) or not name else f" {_shown(value)!r}"
        if name == "workdir" and _is_autofuse_home(value):
            where = "AUTOFUSE_HOME"
        elif name == "workdir" and _is_cwd(value):
            shown += " (the current directory)"
        if err["type"] == "extra_forbidden":
            msg = "unknown option"
        elif err["type"] == "value_error" and "error" in err.get("ctx", {}):
            msg = str(err["ctx"]["error"])  # our own message, without pydantic's prefix
        else:
            msg = err["msg"]
        parts.append(f"{where}{shown}: {msg}" if where else msg)
    return "; ".join(parts)


def _shown(value: Any) -> Any:
    return mask_url(value) if isinstance(value, str) else value


def _is_autofuse_home(value: Any) -> bool:
    home = os.environ.get("AUTOFUSE_HOME")
    if not home or not isinstance(value, str):
        return False
    return Path(home).expanduser().resolve() == Path(value).expanduser().resolve()


def _is_cwd(value: Any) -> bool:
    return isinstance(value, str) and Path(value).expanduser().resolve() == Path.cwd().resolve()


def _ok(value: Any, problem: str | None) -> Any:
    if problem:
        raise ValueError(problem)
    return value


# ---- checks shared with the other commands' options --------------------------------------------

_DEVICE_RE = re.compile(r"(cpu|cuda|mps)(?::(\d+))?")


def device_problem(name: str) -> str | None:
    """Why ``name`` is not a device of this machine (``cpu``, ``cuda``, ``cuda:N``, ``mps``), or
    None. A device that does not exist here is refused at start, not at the first trial."""
    m = _DEVICE_RE.fullmatch(str(name).strip())
    if not m or (m.group(1) in ("cpu", "mps") and m.group(2) not in (None, "0")):
        return "not a device (use cpu, cuda, cuda:N or mps)"
    kind, index = m.group(1), m.group(2)
    if kind == "cpu":
        return None
    import torch  # only when a device is named: `autofuse --help` stays fast

    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        return None if mps is not None and mps.is_available() else "no MPS device on this machine"
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 0:
        return "no CUDA GPU is visible on this machine (use cpu)"
    if index is not None and int(index) >= n:
        visible = "cuda:0" if n == 1 else f"cuda:0 to cuda:{n - 1}"
        return f"no such GPU: this machine has {n} visible ({visible})"
    return None


def devices_problem(text: str) -> str | None:
    """Why a ``--devices`` list (``cuda:0,cuda:1``, ``cpu``) cannot be used, or None."""
    names = [d.strip() for d in str(text).split(",")]
    if not any(names):
        return "no device named (use e.g. cuda:0,cuda:1 or cpu)"
    if "" in names:
        return "an empty entry in the list (use e.g. cuda:0,cuda:1)"
    for d in names:
        problem = device_problem(d)
        if problem:
            return f"{d}: {problem}"
    return None


def storage_problem(url: str) -> str | None:
    """Why ``url`` cannot be a study storage (not a SQLAlchemy URL, an unknown database, a
    driver that is not installed, a SQLite file that is a folder), or None. Nothing is opened:
    a server that does not answer is found when the storage is opened."""
    if str(url).split(":", 1)[0].lower() == "grpc":  # Optuna's storage proxy (storage-proxy)
        try:
            parts = urllib.parse.urlsplit(str(url))
            ok = bool(parts.hostname) and parts.port is not None and not parts.path.strip("/")
        except ValueError:
            ok = False
        return None if ok else "a storage proxy address is grpc://HOST:PORT"
    try:
        u = make_url(str(url))
    except (ArgumentError, ValueError):
        return (
            "not a SQLAlchemy URL (e.g. sqlite:///trials/autofuse.db or "
            "postgresql+psycopg2://user@host/db)"
        )
    try:
        dialect = u.get_dialect()
    except NoSuchModuleError:
        return f"unknown database {u.drivername!r} (use sqlite, postgresql or mysql)"
    try:
        dialect.import_dbapi()
    except ImportError as e:
        return (
            f"the {u.drivername} driver is not installed ({e}); install it or name an installed "
            "one (postgresql+psycopg2://, mysql+pymysql://)"
        )
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        db = Path(u.database).expanduser()
        if db.is_dir():
            return f"{db} is a folder, not a database file"
        problem = folder_problem(db.parent, write=False)
        if problem:
            return f"the folder of {db} {problem}"
    return None


_MLFLOW_SCHEMES = ("http", "https", "file", "sqlite", "postgresql", "mysql", "mssql")
_MLFLOW_PLAIN = ("databricks", "databricks-uc", "uc")


def mlflow_uri_problem(uri: str) -> str | None:
    """Why ``uri`` is not an MLflow tracking URI (``off`` turns MLflow off), or None. A server
    that does not answer is not a problem here: MLflow is then skipped with a warning and
    ``autofuse mlflow sync`` back-fills it later."""
    text = str(uri).strip()
    if text == "off" or text in _MLFLOW_PLAIN or text.startswith(("databricks://", "uc:")):
        return None
    if not text:
        return "empty (give a tracking URI, or off)"
    if "://" not in text and not text.startswith("sqlite:"):
        return None  # a local folder: MLflow's file store
    scheme = text.split(":", 1)[0].lower()
    if scheme.split("+")[0] not in _MLFLOW_SCHEMES:
        return (
            f"not an MLflow tracking URI (scheme {scheme!r}; use http(s)://host:port, "
            "sqlite:///mlflow.db, a database URL, file:///folder, or off)"
        )
    if scheme in ("http", "https"):
        try:
            parts = urllib.parse.urlsplit(text)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError as e:
            return f"not a valid URL ({e})"
        if not parts.hostname:
            return "no host in the URL (use e.g. http://127.0.0.1:5000)"
        return None
    if scheme == "file":
        return None
    return storage_problem(text)


def artifacts_uri(value: str) -> str:
    """``--artifacts`` as stored with the study: a URI as given (its store checks it), a bare
    path as the ``file://`` URI of its absolute path (other hosts must not resolve it again)."""
    text = str(value).strip()
    if not text:
        raise ValueError("empty (give an artifact store URI or a folder)")
    if "://" in text:
        return text.rstrip("/")
    problem = folder_problem(Path(text).expanduser())
    if problem:
        raise ValueError(problem)
    return Path(text).expanduser().resolve().as_uri()


def _check(option: str, value: Any, problem: str | None) -> Any:
    if problem:
        raise ConfigError(f"{option} {_shown(value)!r}: {problem}")
    return value


def check_device(name: str, option: str = "--device") -> str:
    """``name`` if it is a device of this machine, else a ConfigError naming ``option``."""
    return _check(option, name, device_problem(name)).strip()


def check_storage(url: str, option: str = "--storage") -> str:
    """``url`` if it can be a study storage (:func:`storage_problem`), else a ConfigError."""
    return _check(option, url, storage_problem(url))


def check_mlflow_uri(uri: str, option: str = "--mlflow-uri") -> str:
    """``uri`` if it is an MLflow tracking URI or ``off``, else a ConfigError."""
    return _check(option, uri, mlflow_uri_problem(uri))


def check_workdir(path: str | os.PathLike[str], option: str = "--workdir") -> str:
    """``path`` if autofuse can write its outputs there, else a ConfigError naming ``option``."""
    return _check(option, os.fspath(path), workdir_problem(path))


__all__ = [
    "PRUNER_NAMES",
    "SAMPLER_NAMES",
    "STORED",
    "SearchOptions",
    "artifacts_uri",
    "check_device",
    "check_mlflow_uri",
    "check_storage",
    "check_workdir",
    "device_problem",
    "flag",
    "mlflow_uri_problem",
    "storage_problem",
]
