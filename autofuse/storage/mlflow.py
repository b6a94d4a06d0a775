"""MLflow tracking for autofuse studies: one experiment per study, one parent run, a nested run per trial.

The tracker is thin: :class:`mlflow.MlflowClient` does the work, always with explicit run ids (never
``mlflow.start_run``), so several worker processes can log to one study at once. Every public method
is safe to call when MLflow is unreachable: it logs one warning, sets ``available = False`` and
returns ``None`` / ``0`` / ``[]`` instead of raising into the search. :meth:`MlflowTracker.sync`
back-fills trials that never reached MLflow (server down, worker killed) from autofuse's own
trial records, so tracking can be repaired after the fact.

Layout in MLflow
----------------
- experiment: the study name (tags ``autofuse.study`` and ``mlflow.experimentKind`` =
  ``custom_model_development``: a model-training experiment, also set on an older experiment
  when a study resumes)
- parent run: run name = study name, tags ``autofuse.role=study``, ``autofuse.study=<name>``; the
  search's settings as params. When the search finishes (:mod:`autofuse.mlflow_study`): the best
  model as a pyfunc model (:meth:`MlflowTracker.log_best_model`, registered under the study's
  name once per best model), the best trial's metrics and the winner's design
  (:meth:`MlflowTracker.log_best`), artifacts ``report.html`` and ``leaderboard.json``
  (:meth:`MlflowTracker.log_study_files`) and ``best/architecture.json`` (or ``ensemble.json``).
- trial runs: nested (tag ``mlflow.parentRunId``), run name ``trial-<n>``, tags
  ``autofuse.role=trial``, ``autofuse.trial=<n>``, ``autofuse.family``, ``autofuse.method``,
  ``autofuse.point``, ``autofuse.encoders`` (JSON) and ``autofuse.encoder.<modality>``,
  ``autofuse.status`` (COMPLETE / PRUNED / FAIL), ``autofuse.reason``, ``autofuse.baseline``;
  params = the flattened Optuna params; per-epoch metrics ``val_<metric>`` and ``train_loss`` at
  step = epoch; final metrics ``val_*`` / ``test_*`` (the best epoch's values, logged last so they
  are the run's "latest" value), ``n_params``, ``latency_ms``, ``train_time_s``, ``epochs_run``;
  artifact ``spec.json``. Run status: ``FINISHED`` (complete or pruned: it trained normally, see
  ``autofuse.status`` / ``autofuse.reason``), ``KILLED`` (worker killed / interrupted),
  ``FAILED`` (error, diverged, oom, ...).

Looking at a study
------------------
Local default store (``trials/mlflow.db``, artifacts in ``trials/mlartifacts/``)::

    mlflow ui --backend-store-uri sqlite:///trials/mlflow.db --port 5000
    # open http://127.0.0.1:5000/#/experiments/<id>/runs?workflowType=machine_learning
    # (the link autofuse prints and writes to summary.json: see experiment_url)

Shared server for several machines (then give every worker the tracking URI ``http://HOST:5000``)::

    mlflow server --host 0.0.0.0 --port 5000 --backend-store-uri postgresql://USER@DBHOST/mlflow \\
        --artifacts-destination s3://BUCKET/mlflow --allowed-hosts "HOST:5000,HOST"

Leaderboard view in the UI: open the study's experiment, search
``tags.`autofuse.role` = 'trial' and attributes.status = 'FINISHED'``, sort by
``metrics.val_accuracy`` (classification; ``val_rmse`` ascending for regression) and show the
columns ``metrics.val_accuracy``, ``metrics.val_macro_f1``, ``metrics.test_accuracy``,
``metrics.n_params``, ``metrics.latency_ms``, ``tags.autofuse.family``, ``tags.autofuse.method``,
``tags.autofuse.point``, ``tags.autofuse.encoders``, ``tags.autofuse.status``,
``tags.autofuse.reason``. The same from Python::

    import mlflow
    mlflow.set_tracking_uri("sqlite:///trials/mlflow.db")
    df = mlflow.search_runs(experiment_names=["<study>"],
                            filter_string="tags.`autofuse.role` = 'trial' and attributes.status = 'FINISHED'",
                            order_by=["metrics.val_accuracy DESC"])
    df[["tags.autofuse.trial", "metrics.val_accuracy", "metrics.test_accuracy",
        "tags.autofuse.family", "tags.autofuse.method", "tags.autofuse.point",
        "tags.autofuse.encoders"]]

Timeouts: for ``http(s)://`` URIs the tracker probes ``/health`` (3 s) before anything else and
sets MLflow's HTTP retry defaults (``MLFLOW_HTTP_REQUEST_MAX_RETRIES=1``,
``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR=1``, ``MLFLOW_HTTP_REQUEST_TIMEOUT=30``) unless the environment
already sets them, so a dead server costs seconds, not minutes.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import json
import logging
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import mlflow
from filelock import FileLock
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from autofuse._util import first_line, mask_url, sqlite_path

log = logging.getLogger(__name__)

ROLE_TAG = "autofuse.role"
STUDY_TAG = "autofuse.study"
TRIAL_TAG = "autofuse.trial"
PARENT_TAG = "mlflow.parentRunId"
BEST_MODEL_TAG = "autofuse.best_model_uri"
#: which best model the parent run holds (``trial:<n>``, or a staged search's winner): logging
#: and registering it again is skipped
BEST_KEY_TAG = "autofuse.best_model_key"
REGISTERED_TAG = "autofuse.registered_model"
#: the experiment kind MLflow's UI reads: a model-training experiment, not a GenAI one
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
#: MLflow 3.17's UI opens every experiment on the GenAI pages unless the browser's
#: "GenAI | Model training" switch says otherwise; this query sets it (see :func:`experiment_url`)
UI_QUERY = "?workflowType=machine_learning"
#: ``mlflow ui``'s default port (the links given for a local SQLite store)
UI_PORT = 5000
REPORT_ARTIFACT = "report.html"
LEADERBOARD_ARTIFACT = "leaderboard.json"
#: run artifact folder for architecture.json (not "best_model": MLflow 3 resolves
#: ``runs:/<run>/best_model`` to the logged model of that name)
BEST_ARTIFACT_DIR = "best"

#: Optuna / autofuse trial states -> MLflow run statuses (a pruned trial trained normally)
RUN_STATUS = {
    "COMPLETE": "FINISHED",
    "FINISHED": "FINISHED",
    "PRUNED": "FINISHED",
    "KILLED": "KILLED",
    "FAIL": "FAILED",
    "FAILED": "FAILED",
}
#: reasons of a FAIL record whose run is KILLED rather than FAILED (the worker stopped)
KILLED_REASONS = ("killed", "interrupted")
#: descriptive trial tags (the search logs them under these names; :func:`trial_tags` too)
TAG_PREFIX = "autofuse."
#: trial-record fields logged as final metrics (besides val_metrics / test_metrics)
SCALAR_METRICS = (
    "n_params",
    "latency_ms",
    "train_time_s",
    "epochs_run",
    "best_epoch",
    "peak_gpu_mb",
)

PROBE_TIMEOUT_S = 3.0
HTTP_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
# Conservative limits that older MLflow servers also accept (3.x allows 6000 / 8000).
PARAM_VALUE_MAX = 500
TAG_VALUE_MAX = 5000
KEY_MAX = 250
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
_BAD_KEY_CHARS = re.compile(r"[^\w.\- /:]")


def default_tracking_uri(trials_dir: str | Path) -> str:
    """``sqlite:///<trials_dir>/mlflow.db`` (absolute path)."""
    return f"sqlite:///{(Path(trials_dir).expanduser().resolve() / 'mlflow.db').as_posix()}"


def experiment_url(
    uri: str,
    experiment_id: str,
    run_id: str | None = None,
    *,
    metric: str | None = None,
    maximize: bool = True,
) -> str:
    """The study's page in the MLflow UI: its Runs page
    ``<server>/#/experiments/<id>/runs?workflowType=machine_learning`` (sorted by
    ``val_<metric>``, best first, when ``metric`` is given), or with ``run_id`` that run's page.

    ``workflowType=machine_learning`` is what makes MLflow 3.17's UI show training runs: the
    experiment kind tag alone does not beat the browser's stored "GenAI | Model training"
    switch (default GenAI), and ``#/experiments/<id>`` alone opens the GenAI overview. The
    ``/runs`` route also honours ``orderByKey`` / ``orderByAsc`` (the bare experiment route
    drops them). For a non-HTTP store (SQLite) the server is ``mlflow ui``'s default
    ``http://127.0.0.1:5000``. Credentials and the query of ``uri`` are left out."""
    base = f"http://127.0.0.1:{UI_PORT}"
    if _is_http(uri):
        u = urllib.parse.urlsplit(uri)
        host = u.hostname or ""
        host = f"[{host}]" if ":" in host else host
        base = f"{u.scheme}://{host}{f':{u.port}' if u.port else ''}{u.path.rstrip('/')}"
    if run_id:
        return f"{base}/#/experiments/{experiment_id}/runs/{run_id}{UI_QUERY}"
    query = UI_QUERY
    if metric:
        key = urllib.parse.quote(f"metrics.`{epoch_metric_name(metric)}`")
        query += f"&orderByKey={key}&orderByAsc={'false' if maximize else 'true'}"
    return f"{base}/#/experiments/{experiment_id}/runs{query}"


# --------------------------------------------------------------------------- value helpers


def _key(k: Any) -> str:
    return _BAD_KEY_CHARS.sub("_", str(k))[:KEY_MAX] or "_"


def _text(v: Any, limit: int) -> str:
    if isinstance(v, str):
        s = v
    elif isinstance(v, (dict, list, tuple)):
        s = json.dumps(v, sort_keys=True, default=str, separators=(",", ":"))
    else:
        s = str(v)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def flatten(d: Mapping[str, Any] | None, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"a.b.c": value}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in (d or {}).items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, name + "."))
        else:
            out[name] = v
    return out


def _as_float(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def epoch_metric_name(k: str) -> str:
    """Per-epoch names: ``accuracy`` -> ``val_accuracy``; ``train_*`` / ``val_*`` / ``test_*`` kept."""
    return k if k.startswith(("val_", "test_", "train_")) else f"val_{k}"


def final_metrics(
    val_metrics: Mapping[str, Any] | None = None,
    test_metrics: Mapping[str, Any] | None = None,
    **scalars: Any,
) -> dict[str, float]:
    """Final metrics for :meth:`MlflowTracker.end_trial`: ``val_<m>``, ``test_<m>`` and scalars as given
    (``n_params=..., latency_ms=...``); non-numeric values are dropped, ``train_*`` keys kept as is."""
    out: dict[str, float] = {}
    for prefix, ms in (("val_", val_metrics), ("test_", test_metrics)):
        for k, v in (ms or {}).items():
            f = _as_float(v)
            if f is not None and k != "epoch":
                out[k if k.startswith(("train_", prefix)) else prefix + k] = f
    for k, v in scalars.items():
        f = _as_float(v)
        if f is not None:
            out[k] = f
    return out


def trial_tags(record: Mapping[str, Any]) -> dict[str, Any]:
    """Descriptive tags of a trial record: ``autofuse.family`` / ``method`` / ``point`` /
    ``encoders`` (JSON) / ``status`` / ``reason`` / ``baseline`` / ``retry_of`` / ``device`` /
    ``worker`` and ``autofuse.trial``."""
    tags: dict[str, Any] = {}
    for k in (
        "family",
        "method",
        "point",
        "encoders",
        "status",
        "reason",
        "baseline",
        "retry_of",
        "device",
        "worker",
    ):
        v = record.get(k)
        if v not in (None, "", {}):
            tags[TAG_PREFIX + k] = json.dumps(v) if isinstance(v, (dict, list)) else v
    if record.get("number") is not None:
        tags[TRIAL_TAG] = int(record["number"])
    return tags


def run_status(status: str | None, reason: str | None = None) -> str:
    """MLflow run status for ``FINISHED``/``KILLED``/``FAILED`` or an Optuna state
    (``COMPLETE``/``PRUNED`` -> FINISHED, ``FAIL`` -> FAILED, or KILLED when ``reason`` is
    ``killed`` / ``interrupted``)."""
    s = str(status or "FINISHED").upper()
    if s not in RUN_STATUS:
        raise ValueError(f"run status {status!r}: use FINISHED, KILLED or FAILED")
    if s == "FAIL" and reason in KILLED_REASONS:
        return "KILLED"
    return RUN_STATUS[s]


def _ms(v: Any) -> int | None:
    """datetime / ISO string / epoch seconds -> epoch milliseconds."""
    if v is None:
        return None
    try:
        if isinstance(v, _dt.datetime):
            dt = v if v.tzinfo else v.replace(tzinfo=_dt.timezone.utc)
            return int(dt.timestamp() * 1000)
        if isinstance(v, str):
            return _ms(_dt.datetime.fromisoformat(v))
        f = float(v)
        return int(f if f > 1e11 else f * 1000)  # already ms vs seconds
    except (TypeError, ValueError, OverflowError):
        return None


def _now_ms() -> int:
    return int(time.time() * 1000)


# --------------------------------------------------------------------------- connectivity


def probe(uri: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """``None`` when an http(s) tracking server answers (any HTTP status), else the reason."""
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout):  # noqa: S310 - http(s) only
            return None
    except urllib.error.HTTPError:
        return None  # something answered (auth proxy, old server without /health)
    except Exception as e:  # URLError, timeout, connection refused / reset
        return f"{type(e).__name__}: {getattr(e, 'reason', e)}"


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


@contextlib.contextmanager
def _file_lock(path: Path | None):
    """Inter-process lock beside a SQLite store: MLflow's schema creation and the parent run's
    get-or-create break under concurrent starts."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path)):
        yield


@contextlib.contextmanager
def _global_tracking_uri(uri: str):
    """``mlflow.<flavor>.log_model`` only reads the global tracking URI: set it, then restore it."""
    try:  # a private helper: optional, with a public fallback below
        # optional: MLflow's private helper (a public fallback follows)
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri
    except ImportError:  # pragma: no cover - private helper moved
        _use_tracking_uri = None
    if _use_tracking_uri is not None:
        with _use_tracking_uri(uri):
            yield
        return
    old = mlflow.get_tracking_uri() if mlflow.tracking.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(old)


def _connectivity_error(e: BaseException) -> bool:
    """True for errors that mean the store is unreachable (not a bad value in one call)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        name = type(e).__name__
        text = str(e)
        if name in (
            "ConnectionError",
            "ConnectTimeout",
            "ReadTimeout",
            "Timeout",
            "MaxRetryError",
            "NewConnectionError",
            "ConnectionRefusedError",
            "TimeoutError",
        ):
            return True
        if "Max retries exceeded" in text or "Connection refused" in text:
            return True
        if name == "OperationalError" and "locked" not in text:
            return True
        e = e.__cause__ or e.__context__
    return False


def _safe(default: Any = None):
    """Method decorator: no-op when unavailable; exceptions become one warning, never raise."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(self, *args, **kwargs):
            if not self.available:
                return default() if callable(default) else default
            try:
                return fn(self, *args, **kwargs)
            except Exception as e:
                self._failed(fn.__name__, e)
                return default() if callable(default) else default

        return wrapper

    return deco


# --------------------------------------------------------------------------- tracker


class MlflowTracker:
    """Logs one study to MLflow. Construct one per process (worker); all share the parent run.

    Args:
        uri: tracking URI (``http://host:5000``, ``sqlite:///abs/path/mlflow.db``, ...).
        study_name: the experiment name.
        artifact_location: where a newly created experiment stores artifacts; default for SQLite
            URIs ``<db folder>/mlartifacts/<study>`` (MLflow would otherwise use ``./mlruns`` of the
            current directory), for servers the server's artifact root.
    """

    def __init__(
        self,
        uri: str,
        study_name: str,
        *,
        artifact_location: str | None = None,
        probe_timeout: float = PROBE_TIMEOUT_S,
    ) -> None:
        self.uri = str(uri)
        self.study_name = study_name
        self.available = False
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self.client = None
        self._probe_timeout = probe_timeout
        self._warned: set[str] = set()
        self._own_runs: set[str] = set()
        self._last_step: dict[str, int] = {}
        self._last_ts: dict[str, int] = {}
        self._db = sqlite_path(self.uri)
        self._lock = self._db.with_name(self._db.name + ".lock") if self._db else None
        if artifact_location is None and self._db is not None:
            safe = re.sub(r"[^\w.\-]", "_", study_name) or "study"
            artifact_location = (self._db.parent / "mlartifacts" / safe).resolve().as_uri()
        self._artifact_location = artifact_location
        try:
            if _is_http(self.uri):
                for k, v in HTTP_ENV_DEFAULTS.items():
                    os.environ.setdefault(k, v)
                reason = probe(self.uri, probe_timeout)
                if reason is not None:
                    self._off(f"no MLflow server at {mask_url(self.uri)} ({reason})")
                    return
            with _file_lock(self._lock):
                if self._db is not None:
                    self._db.parent.mkdir(parents=True, exist_ok=True)
                self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
                self.client.search_experiments(max_results=1)  # creates / checks the schema now
            self.available = True
        except Exception as e:
            self._off(
                f"cannot use MLflow at {mask_url(self.uri)} ({type(e).__name__}: {first_line(e)})"
            )

    # ------------------------------------------------------------------ failure handling

    def _off(self, why: str) -> None:
        self.available = False
        log.warning("%s; MLflow tracking is off for study %s", why, self.study_name)

    def _failed(self, what: str, e: Exception) -> None:
        down = _connectivity_error(e)
        if not down and _is_http(self.uri):
            down = probe(self.uri, self._probe_timeout) is not None
        if down:
            self._off(
                f"MLflow at {mask_url(self.uri)} unreachable during {what} ({type(e).__name__}: "
                f"{first_line(e)})"
            )
        elif what not in self._warned:
            self._warned.add(what)
            log.warning(
                "MLflow %s failed for study %s: %s: %s",
                what,
                self.study_name,
                type(e).__name__,
                first_line(e),
            )
        else:
            log.debug("MLflow %s failed again: %s", what, e)

    # ------------------------------------------------------------------ low-level helpers

    def _log_batch(
        self,
        run_id: str,
        metrics: Iterable = (),
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        c = self.client
        ps = [Param(_key(k), _text(v, PARAM_VALUE_MAX)) for k, v in (params or {}).items()]
        ts = [RunTag(_key(k), _text(v, TAG_VALUE_MAX)) for k, v in (tags or {}).items()]
        ms = list(metrics)
        for i in range(0, len(ps), PARAMS_PER_BATCH):
            c.log_batch(run_id, params=ps[i : i + PARAMS_PER_BATCH], synchronous=True)
        for i in range(0, len(ts), PARAMS_PER_BATCH):
            c.log_batch(run_id, tags=ts[i : i + PARAMS_PER_BATCH], synchronous=True)
        for i in range(0, len(ms), METRICS_PER_BATCH):
            c.log_batch(run_id, metrics=ms[i : i + METRICS_PER_BATCH], synchronous=True)

    @staticmethod
    def _metrics(values: Mapping[str, Any], step: int, ts: int, name=lambda k: k) -> list:
        out = []
        for k, v in (values or {}).items():
            f = _as_float(v)
            if f is not None and k != "epoch":
                out.append(Metric(_key(name(k)), f, ts, int(step)))
        return out

    @staticmethod
    def _tags(tags: Mapping[str, Any] | None) -> dict[str, Any]:
        """Drop ``None``; an ``encoders`` / ``autofuse.encoders`` map (dict or JSON text) also
        becomes one ``[autofuse.]encoder.<modality>`` tag per modality."""
        out = {}
        for k, v in (tags or {}).items():
            if v is None:
                continue
            out[k] = v
            if k.endswith("encoders"):
                enc = v
                if isinstance(v, str):
                    with contextlib.suppress(ValueError):
                        enc = json.loads(v)
                if isinstance(enc, Mapping):
                    out.update({f"{k[: -len('encoders')]}encoder.{m}": e for m, e in enc.items()})
        return out

    def _search(self, filter_string: str = "", run_view_type: int | None = None) -> list:
        runs, token = [], None
        while True:
            page = self.client.search_runs(
                [self.experiment_id],
                filter_string=filter_string,
                run_view_type=ViewType.ACTIVE_ONLY if run_view_type is None else run_view_type,
                max_results=1000,
                order_by=["attributes.start_time ASC"],
                page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def _experiment(self) -> str:
        if self.experiment_id is not None:
            return self.experiment_id
        c = self.client
        exp = c.get_experiment_by_name(self.study_name)
        if exp is None:
            try:
                eid = c.create_experiment(
                    self.study_name,
                    artifact_location=self._artifact_location,
                    tags={STUDY_TAG: self.study_name, EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
                )
            except MlflowException:  # another worker created it meanwhile
                exp = c.get_experiment_by_name(self.study_name)
                if exp is None:
                    raise
                eid = exp.experiment_id
        else:
            eid = exp.experiment_id
            if exp.lifecycle_stage == "deleted":
                c.restore_experiment(eid)
            if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # made by an older autofuse
                c.set_experiment_tag(eid, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        self.experiment_id = eid
        return eid

    def _parents(self) -> list:
        runs = self._search(f"tags.`{ROLE_TAG}` = 'study'")
        mine = [r for r in runs if r.data.tags.get(STUDY_TAG) == self.study_name]
        return sorted(mine, key=lambda r: (r.info.start_time or 0, r.info.run_id))

    def _ensure_parent(self) -> str:
        if self.parent_run_id is None:
            self._start_study({}, {})
        return self.parent_run_id

    def _trial_runs(self) -> list:
        return [
            r
            for r in self._search(f"tags.`{ROLE_TAG}` = 'trial'")
            if r.data.tags.get(STUDY_TAG) == self.study_name
        ]

    def _final_step(self, run_id: str) -> int:
        if run_id in self._last_step:
            return self._last_step[run_id]
        run = self.client.get_run(run_id)
        for key in ("train_loss", *run.data.metrics):
            if key in run.data.metrics:
                hist = self.client.get_metric_history(run_id, key)
                return max((m.step for m in hist), default=0)
        return 0

    def _final_ts(self, run_id: str) -> int:
        return max(_now_ms(), self._last_ts.get(run_id, 0) + 1)

    # ------------------------------------------------------------------ study

    @_safe()
    def start_study(
        self, params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None
    ) -> str | None:
        """Get or create the study's experiment and its one parent run (reused on resume)."""
        return self._start_study(params or {}, tags or {})

    def _start_study(self, params: Mapping[str, Any], tags: Mapping[str, Any]) -> str:
        with _file_lock(self._lock):  # SQLite: no two workers create a parent at once
            eid = self._experiment()
            parents = self._parents()
            if parents:
                run = parents[0]
            else:
                mine = self.client.create_run(
                    eid,
                    run_name=self.study_name,
                    start_time=_now_ms(),
                    tags={ROLE_TAG: "study", STUDY_TAG: self.study_name},
                )
                # Several machines: keep the earliest parent, drop a duplicate we just made.
                parents = self._parents() or [mine]
                run = parents[0]
                if run.info.run_id != mine.info.run_id:
                    self.client.delete_run(mine.info.run_id)
        pid = run.info.run_id
        if run.info.status != "RUNNING":
            self.client.update_run(pid, status="RUNNING")
        self.parent_run_id = pid
        have = dict(run.data.params)
        flat = {_key(k): v for k, v in flatten(params).items()}
        new = {k: v for k, v in flat.items() if k not in have}
        changed = sorted(
            k for k, v in flat.items() if k in have and have[k] != _text(v, PARAM_VALUE_MAX)
        )
        if changed:
            log.info(
                "MLflow params of study %s kept from the first run (changed now: %s)",
                self.study_name,
                ", ".join(changed),
            )
        self._log_batch(pid, params=new, tags=self._tags(tags))
        return pid

    @_safe()
    def end_study(self, status: str = "FINISHED", metrics: Mapping[str, Any] | None = None) -> None:
        """Log study-level metrics (e.g. ``best_value``) on the parent run and end it."""
        if self.parent_run_id is None:
            return
        ts = _now_ms()
        self._log_batch(self.parent_run_id, metrics=self._metrics(metrics or {}, 0, ts))
        self.client.set_terminated(self.parent_run_id, status=run_status(status))

    # ------------------------------------------------------------------ trials

    @_safe()
    def start_trial(
        self,
        number: int,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> str | None:
        """Create the nested run ``trial-<number>``; returns its run id."""
        pid = self._ensure_parent()
        base = {
            PARENT_TAG: pid,
            ROLE_TAG: "trial",
            STUDY_TAG: self.study_name,
            TRIAL_TAG: str(int(number)),
        }
        run = self.client.create_run(
            self.experiment_id, run_name=f"trial-{int(number)}", start_time=_now_ms(), tags=base
        )
        rid = run.info.run_id
        self._own_runs.add(rid)
        extra = {k: v for k, v in self._tags(tags).items() if k not in base}
        self._log_batch(rid, params=flatten(params or {}), tags=extra)
        return rid

    @_safe()
    def log_epoch(self, run_id: str | None, epoch: int, metrics: Mapping[str, Any]) -> None:
        """Per-epoch metrics at ``step=epoch``: ``accuracy`` is logged as ``val_accuracy``;
        ``train_loss`` (any ``train_*`` / ``val_*`` / ``test_*``) as is. Non-numeric values are skipped."""
        if run_id is None:
            return
        ts = max(_now_ms(), self._last_ts.get(run_id, 0))
        self._log_batch(run_id, metrics=self._metrics(metrics, epoch, ts, epoch_metric_name))
        self._last_step[run_id] = max(int(epoch), self._last_step.get(run_id, 0))
        self._last_ts[run_id] = ts

    @_safe()
    def end_trial(
        self,
        run_id: str | None,
        status: str = "FINISHED",
        metrics: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        spec: Mapping[str, Any] | None = None,
    ) -> None:
        """Final metrics (names as given; see :func:`final_metrics`), tags, ``spec.json``, status.

        ``status``: ``FINISHED`` / ``KILLED`` / ``FAILED`` (Optuna's ``COMPLETE`` / ``PRUNED`` /
        ``FAIL`` are mapped, see :func:`run_status`). Final metrics are logged at the last epoch's step with a later
        timestamp, so they are the run's latest values (what the UI's table sorts on)."""
        if run_id is None:
            return
        st = run_status(status)
        if metrics:
            self._log_batch(
                run_id,
                metrics=self._metrics(metrics, self._final_step(run_id), self._final_ts(run_id)),
            )
        self._log_batch(run_id, tags=self._tags(tags))
        if spec is not None:
            self.client.log_dict(run_id, dict(spec), "spec.json")
        self.client.set_terminated(run_id, status=st)
        self._own_runs.discard(run_id)
        self._last_step.pop(run_id, None)
        self._last_ts.pop(run_id, None)

    def kill_run(self, run_id: str | None) -> None:
        """End a trial run whose worker died as ``KILLED`` (reason ``killed``)."""
        self.end_trial(
            run_id, "KILLED", {}, {TAG_PREFIX + "status": "FAIL", TAG_PREFIX + "reason": "killed"}
        )

    @_safe(default=list)
    def mark_stale_runs_killed(self, alive: Iterable[int] = ()) -> list[str]:
        """End trial runs of this study left ``RUNNING`` (a killed worker) as ``KILLED``.

        Runs started by this tracker and those of trial numbers in ``alive`` (with several
        workers: the trials Optuna still sees running with a fresh heartbeat) are left alone.
        Returns the run ids marked."""
        self._experiment()
        keep = {int(n) for n in alive}
        marked = []
        for r in self._search("attributes.status = 'RUNNING'"):
            t = r.data.tags
            if t.get(ROLE_TAG) != "trial" or t.get(STUDY_TAG) != self.study_name:
                continue
            if r.info.run_id in self._own_runs:
                continue
            n = t.get(TRIAL_TAG)
            if n is not None and n.lstrip("-").isdigit() and int(n) in keep:
                continue
            if not t.get(TAG_PREFIX + "reason"):
                self._log_batch(
                    r.info.run_id,
                    tags={TAG_PREFIX + "status": "FAIL", TAG_PREFIX + "reason": "killed"},
                )
            self.client.set_terminated(r.info.run_id, status="KILLED")
            marked.append(r.info.run_id)
        if marked:
            log.info(
                "MLflow: marked %d stale run(s) of study %s KILLED", len(marked), self.study_name
            )
        return marked

    # ------------------------------------------------------------------ best model

    @_safe()
    def log_best_model(
        self,
        log_model: Callable[[str], tuple[str, str | None]],
        *,
        key: str | None = None,
    ) -> str | None:
        """Log the study's best model into the parent run: ``log_model(parent_run_id)`` logs it
        (the pyfunc model of :func:`autofuse.mlflow_model.log_pyfunc`, registered under the
        study's name) and returns ``(model_uri, "name/version" or None)``. Returns the model
        URI.

        ``key`` names the best model (``trial:<n>``, ``single:<n>``, ``ensemble:<n>,<m>``): when
        the parent run already holds the model of that key (tag ``autofuse.best_model_key``),
        nothing is logged or registered again and its URI is returned. Callers that may run at
        once (two searches, a sync) hold the study lock around this call, so one model version
        is registered per best model."""
        pid = self._ensure_parent()
        if key is not None:
            tags = self.client.get_run(pid).data.tags
            if tags.get(BEST_KEY_TAG) == key:
                log.info(
                    "MLflow: best model %s of study %s is logged already", key, self.study_name
                )
                return tags.get(BEST_MODEL_TAG)
        model_uri, registered = log_model(pid)
        tags = {BEST_MODEL_TAG: model_uri}
        if key is not None:
            tags[BEST_KEY_TAG] = key
        if registered:
            tags[REGISTERED_TAG] = registered
        self._log_batch(pid, tags=tags)
        return model_uri

    @_safe()
    def log_best(
        self, metrics: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None
    ) -> None:
        """The best trial's final metrics (``val_*``, ``test_*``, ``n_params``, ``latency_ms``)
        and the winner's design (tags) on the parent run, so the runs table shows the study's
        row with metric columns. Logged with the current time: a resumed study's new best is
        the run's latest value."""
        pid = self._ensure_parent()
        self._log_batch(
            pid, metrics=self._metrics(metrics or {}, 0, _now_ms()), tags=self._tags(tags)
        )

    @_safe()
    def log_study_files(self, html: str | Path | None = None, table: Any = None) -> list[str]:
        """The comparison report (``report.html``, rendered by MLflow's artifact viewer) and the
        leaderboard (a pandas DataFrame, logged with ``MlflowClient.log_table`` as
        ``leaderboard.json``) as artifacts of the parent run. A second call replaces both
        (``log_table`` would append to an existing table: the old one is deleted first).
        Returns the artifact paths logged."""
        pid = self._ensure_parent()
        logged = []
        if html is not None and Path(html).is_file():
            with tempfile.TemporaryDirectory(prefix="autofuse-report-") as tmp:
                dst = Path(tmp) / REPORT_ARTIFACT
                shutil.copyfile(html, dst)
                self.client.log_artifact(pid, str(dst))
            logged.append(REPORT_ARTIFACT)
        if table is not None:
            if any(f.path == LEADERBOARD_ARTIFACT for f in self.client.list_artifacts(pid)):
                run = self.client.get_run(pid)
                repo = get_artifact_repository(run.info.artifact_uri, tracking_uri=self.uri)
                repo.delete_artifacts(LEADERBOARD_ARTIFACT)
            self.client.log_table(pid, data=table, artifact_file=LEADERBOARD_ARTIFACT)
            logged.append(LEADERBOARD_ARTIFACT)
        return logged

    def urls(self, metric: str | None = None, maximize: bool = True) -> dict[str, str]:
        """Where the study opens in the MLflow UI (see :func:`experiment_url`; the runs sorted
        by ``val_<metric>``); empty when MLflow is off."""
        if not self.available or self.experiment_id is None:
            return {}
        url = experiment_url(self.uri, self.experiment_id, metric=metric, maximize=maximize)
        out = {"experiment_url": url}
        if self.parent_run_id is not None:
            out["run_url"] = experiment_url(self.uri, self.experiment_id, self.parent_run_id)
        if not _is_http(self.uri):
            out["ui"] = f"mlflow ui --backend-store-uri {self.uri} --port {UI_PORT}"
        return out

    # ------------------------------------------------------------------ back-fill

    @_safe(default=0)
    def sync(
        self,
        records: Iterable[Mapping[str, Any]],
        on_run: Callable[[int, str], None] | None = None,
    ) -> int:
        """Create the nested runs missing in MLflow for finished trial records; returns how many.

        ``records``: dicts or objects with ``to_dict()`` (``autofuse.storage.history.TrialRecord``).

        A record (``number``, ``status``, ``reason``, ``params`` or ``spec``, ``family``, ``method``,
        ``point``, ``encoders``, ``val_metrics``, ``test_metrics``, ``history``, ``mlflow_run_id``,
        optional ``n_params`` / ``latency_ms`` / ``train_time_s`` / ``epochs_run`` /
        ``started_at`` / ``finished_at``) is missing when no run of this study carries its trial
        number (tag ``autofuse.trial``) and its ``mlflow_run_id`` is unset or unknown. Records still
        ``RUNNING`` are skipped; a run left ``RUNNING`` for a finished record gets its final
        metrics, tags and status. Idempotent: a second call creates nothing.

        ``on_run(number, run_id)`` is called for every finished record whose run is another than
        the record's ``mlflow_run_id`` (created now, or found by its trial number), so the
        caller can record it."""
        self._ensure_parent()
        runs = self._trial_runs()
        by_number: dict[int, Any] = {}
        for r in runs:
            n = r.data.tags.get(TRIAL_TAG, "")
            if n.lstrip("-").isdigit():
                by_number.setdefault(int(n), r)
        by_id = {r.info.run_id: r for r in runs}
        created = 0
        recs = [r.to_dict() if hasattr(r, "to_dict") else dict(r) for r in records]
        for rec in sorted(recs, key=lambda r: int(r.get("number", 0))):
            if not self.available:
                break
            if str(rec.get("status", "")).upper() not in RUN_STATUS:
                continue  # RUNNING / WAITING: the live worker logs it
            run = by_number.get(int(rec["number"])) or by_id.get(rec.get("mlflow_run_id") or "")
            try:
                if run is None:
                    rid = self._create_from_record(rec)
                    created += 1
                else:
                    rid = run.info.run_id
                    if run.info.status == "RUNNING" and rid not in self._own_runs:
                        self._finish_from_record(rid, rec)
                if on_run is not None and rid != rec.get("mlflow_run_id"):
                    on_run(int(rec["number"]), rid)
            except Exception as e:
                self._failed("sync", e)
        if created:
            log.info("MLflow: back-filled %d trial run(s) of study %s", created, self.study_name)
        return created

    @staticmethod
    def _record_final(rec: Mapping[str, Any]) -> dict[str, float]:
        return final_metrics(
            rec.get("val_metrics"),
            rec.get("test_metrics"),
            **{k: rec.get(k) for k in SCALAR_METRICS},
        )

    def _create_from_record(self, rec: Mapping[str, Any]) -> str:
        n = int(rec["number"])
        base = {
            PARENT_TAG: self.parent_run_id,
            ROLE_TAG: "trial",
            STUDY_TAG: self.study_name,
            TRIAL_TAG: str(n),
            "autofuse.synced": "true",
        }
        start = _ms(rec.get("started_at")) or _now_ms()
        run = self.client.create_run(
            self.experiment_id, run_name=f"trial-{n}", start_time=start, tags=base
        )
        rid = run.info.run_id
        try:
            params = rec.get("params") or flatten(rec.get("spec") or {})
            tags = {k: v for k, v in self._tags(trial_tags(rec)).items() if k not in base}
            ts = _now_ms()
            metrics, last = [], 0
            for row in rec.get("history") or []:
                ep = int(row.get("epoch", last + 1))
                last = max(last, ep)
                metrics += self._metrics(row, ep, ts, epoch_metric_name)
            metrics += self._metrics(self._record_final(rec), last, ts + 1)
            self._log_batch(rid, metrics=metrics, params=params, tags=tags)
            if rec.get("spec"):
                self.client.log_dict(rid, dict(rec["spec"]), "spec.json")
            self.client.set_terminated(
                rid,
                status=run_status(rec["status"], rec.get("reason")),
                end_time=_ms(rec.get("finished_at")),
            )
        except Exception:
            with contextlib.suppress(Exception):
                self.client.delete_run(rid)  # the next sync creates it whole
            raise
        return rid

    def _finish_from_record(self, run_id: str, rec: Mapping[str, Any]) -> None:
        final = self._record_final(rec)
        if final:
            self._log_batch(
                run_id,
                metrics=self._metrics(final, self._final_step(run_id), self._final_ts(run_id)),
            )
        self._log_batch(run_id, tags=self._tags(trial_tags(rec)))
        if rec.get("spec"):
            self.client.log_dict(run_id, dict(rec["spec"]), "spec.json")
        self.client.set_terminated(
            run_id,
            status=run_status(rec["status"], rec.get("reason")),
            end_time=_ms(rec.get("finished_at")),
        )


class NullTracker:
    """The tracker when MLflow is off (``--mlflow-uri off``): every call does nothing."""

    available = False
    experiment_id: str | None = None
    parent_run_id: str | None = None

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None


def open_tracker(
    uri: str | None,
    trials_dir: str | Path,
    study: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
) -> MlflowTracker | NullTracker:
    """The study's tracker with its parent run started: ``uri`` (default the SQLite store under
    ``trials_dir``), or a :class:`NullTracker` for ``"off"``. Unreachable MLflow gives a
    tracker whose calls are no-ops (``available`` False) and one warning."""
    if uri == "off":
        return NullTracker()
    tracker = MlflowTracker(uri or default_tracking_uri(trials_dir), study)
    tracker.start_study(params or {}, tags or {})
    return tracker


__all__ = [
    "MlflowTracker",
    "NullTracker",
    "open_tracker",
    "default_tracking_uri",
    "final_metrics",
    "flatten",
    "probe",
    "run_status",
    "trial_tags",
    "epoch_metric_name",
    "experiment_url",
]
