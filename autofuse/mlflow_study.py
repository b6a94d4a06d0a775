"""What a finished study leaves in MLflow (the end of a search, and ``autofuse mlflow sync``).

The study's experiment is a model-training experiment (tag ``mlflow.experimentKind`` =
``custom_model_development``, set by the tracker) and its links carry
``?workflowType=machine_learning`` (:func:`autofuse.storage.mlflow.experiment_url`), so the MLflow
UI opens on the Runs page. When the search finishes, the study's parent run gets:

- the best model, exported as ``autofuse export`` does (the best trial, or a staged search's
  winner: one model or a greedy ensemble) and logged as the self-contained pyfunc model of
  :mod:`autofuse.mlflow_model`, registered under the study's name: ``autofuse predict
  models:/STUDY/1``, ``autofuse.load`` and ``mlflow.pyfunc.load_model`` all read it. Once per
  best model (tag ``autofuse.best_model_key``): a resumed search with the same best, or a sync,
  registers nothing new;
- the best trial's metrics (``val_*``, ``test_*``, ``n_params``, ``latency_ms``; for an ensemble
  the ensemble's scores and its members' summed size and latency) and ``best_val_*`` /
  ``best_test_*``; the winner's design as tags (``autofuse.family`` / ``method`` / ``point`` /
  ``encoders`` / ``encoder.<modality>``, ``autofuse.winner`` single or ensemble,
  ``autofuse.winner_trials``, ``autofuse.design_trial``);
- artifacts ``report.html`` (the comparison report; MLflow's artifact viewer renders it) and
  ``leaderboard.json`` (:func:`autofuse.leaderboard.leaderboard`'s rows, logged with
  ``MlflowClient.log_table``), replaced by every finish.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from autofuse._util import mask_url
from autofuse.checkpoints import CheckpointStore, study_artifacts
from autofuse.errors import ConfigError
from autofuse.export import export_trial
from autofuse.leaderboard import leaderboard, storage_url
from autofuse.mlflow_model import log_pyfunc_info
from autofuse.paths import Paths
from autofuse.storage import make_storage
from autofuse.storage.history import HistoryStore, reconcile
from autofuse.storage.lock import StudyLock, holding
from autofuse.storage.mlflow import MlflowTracker, default_tracking_uri, final_metrics

log = logging.getLogger(__name__)


def best_model_key(summary: dict) -> str | None:
    """Which best model a summary describes (``trial:<n>``, ``single:<n>`` or
    ``ensemble:<n>,<m>,...`` for a staged search's winner); None without one."""
    winner = summary.get("winner")
    if winner:
        return f"{winner['kind']}:{','.join(str(n) for n in winner['trials'])}"
    best = summary.get("best_trial")
    return None if best is None else f"trial:{best}"


def _board(study: str, storage: str | None, workdir: str | None) -> list[dict[str, Any]]:
    try:
        return leaderboard(study, storage=storage, workdir=workdir)
    except ConfigError as e:  # no study record: MLflow gets no leaderboard, the search goes on
        log.warning("no leaderboard for MLflow: %s", e)
        return []


def best_run_values(summary: dict, board: list[dict[str, Any]]) -> tuple[dict, dict]:
    """The parent run's metrics and tags for the study's best model (see the module docstring)."""
    winner = summary.get("winner") or {}
    trials = [int(n) for n in winner.get("trials") or [summary["best_trial"]]]
    scalars = {"n_params": summary.get("n_params"), "latency_ms": summary.get("latency_ms")}
    if winner.get("kind") == "ensemble":  # the members run one after the other
        rows = {r["trial"]: r for r in board}
        members = [rows.get(n) or {} for n in trials]
        for k, col in (("n_params", "params"), ("latency_ms", "latency_ms")):
            vals = [m.get(col) for m in members]
            scalars[k] = sum(vals) if vals and all(v is not None for v in vals) else None
    metrics = final_metrics(summary.get("val_metrics"), summary.get("test_metrics"), **scalars)
    spec = summary.get("spec") or {}
    fusion = spec.get("fusion") or {}
    tags: dict[str, Any] = {
        "autofuse.family": fusion.get("family"),
        "autofuse.method": fusion.get("method"),
        "autofuse.point": fusion.get("point"),
        "autofuse.encoders": json.dumps(
            {m: e.get("name") for m, e in (spec.get("encoders") or {}).items()}
        )
        if spec.get("encoders")
        else None,
        "autofuse.winner": winner.get("kind") or "single",
        "autofuse.winner_trials": ",".join(map(str, trials)),
        "autofuse.design_trial": winner.get("design", trials[0]),
        "autofuse.best_trial": summary["best_trial"],
    }
    return metrics, tags


def close_study_run(
    tracker: Any,
    summary: dict,
    study: str,
    *,
    workdir: str | None = None,
    storage: str | None = None,
) -> None:
    """End the study's MLflow parent run: the best model logged as a pyfunc model and registered
    under the study's name (once per best model), the best metrics and the winner's design,
    status FINISHED. Callers hold the study lock (two searches finishing at once).
    MLflow trouble never raises: one warning, the search's results stay."""
    if not tracker.available:
        return
    key = best_model_key(summary)
    if key is not None:
        winner = summary.get("winner")
        if winner is not None and winner.get("exported") is False:
            log.warning("the winner of study %s was not exported; no model logged to MLflow", study)
        else:

            def log_model(run_id: str) -> tuple[str, str | None]:
                with tempfile.TemporaryDirectory(prefix="autofuse-register-") as tmp:
                    res = export_trial(
                        study,
                        Path(tmp) / "export",
                        trial=None if winner else summary["best_trial"],
                        workdir=workdir,
                        storage=storage,
                    )
                    info = log_pyfunc_info(
                        res.out, study, run_id, tracking_uri=tracker.uri, experiment=study
                    )
                    files = [res.out / n for n in ("architecture.json", "ensemble.json")]
                    for f in files:
                        if f.is_file():
                            tracker.client.log_artifact(run_id, str(f), "best")
                version = info.registered_model_version
                return info.model_uri, f"{study}/{version}" if version else None

            tracker.log_best_model(log_model, key=key)
        metrics, tags = best_run_values(summary, _board(study, storage, workdir))
        tracker.log_best(metrics, tags)
    best = {f"best_val_{k}": v for k, v in (summary.get("val_metrics") or {}).items()}
    best.update({f"best_test_{k}": v for k, v in (summary.get("test_metrics") or {}).items()})
    tracker.end_study("FINISHED", best)


def log_study_files(
    tracker: Any,
    study: str,
    html: str | Path | None,
    *,
    workdir: str | None = None,
    storage: str | None = None,
) -> list[str]:
    """Log the comparison report ``html`` (when given and present) and the leaderboard to the
    study's parent run, replacing earlier ones. Returns the artifact paths logged."""
    if not tracker.available:
        return []
    board = _board(study, storage, workdir)
    table = pd.DataFrame(board) if board else None
    return tracker.log_study_files(html, table) or []


def mlflow_links(tracker: Any, summary: dict) -> dict[str, str]:
    """The study's MLflow links for ``summary.json`` (empty when MLflow is off): the experiment's
    Runs page sorted by the study's metric, the parent run's page, the registered model
    (``models:/NAME/VERSION``), and for a SQLite store the ``mlflow ui`` command that serves
    them."""
    if not tracker.available:
        return {}
    maximize = summary.get("direction", "maximize") == "maximize"
    out = dict(tracker.urls(summary.get("metric"), maximize))
    try:
        tags = tracker.client.get_run(tracker.parent_run_id).data.tags
    except Exception as e:  # MLflow went away meanwhile: the links stay
        log.debug("MLflow parent run not readable: %s", e)
        return out
    if tags.get("autofuse.registered_model"):
        name, _, version = tags["autofuse.registered_model"].rpartition("/")
        out["registered_model"] = f"models:/{name}/{version}"
    return out


def mlflow_sync(
    study: str,
    *,
    mlflow_uri: str | None = None,
    storage: str | None = None,
    workdir: str | None = None,
) -> int:
    """Repair MLflow after the fact: records first agree with Optuna (a trial that failed without
    a final record), then the runs missing for finished trials are created, and a study whose
    search finished (its ``summary.json``, no trial running) gets its best model logged and
    registered (once per best model), its best metrics, report and leaderboard, and its parent
    run ended FINISHED. Returns the runs created."""
    url = storage_url(storage, workdir)
    hs = HistoryStore(url, create=False)
    if hs.study(study) is None:
        raise ConfigError(f"no study {study!r} in {mask_url(hs.url)}")
    paths = Paths.resolve(workdir)
    uri = mlflow_uri or default_tracking_uri(paths.trials)
    tracker = MlflowTracker(uri, study)
    if not tracker.available:
        raise ConfigError(f"MLflow at {mask_url(uri)} is not reachable")
    tracker.start_study({}, {})
    st = optuna.load_study(study_name=study, storage=make_storage(url))
    reconcile(hs, study, st.get_trials(deepcopy=False))
    created = tracker.sync(
        hs.trials(study), on_run=lambda n, rid: hs.record_trial(study, n, mlflow_run_id=rid)
    )
    store = CheckpointStore(paths.study_dir(study), study_artifacts(st.user_attrs))
    summary_file = store.study_dir / "summary.json"
    running = st.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    if summary_file.is_file() and not running:
        try:
            summary = json.loads(summary_file.read_text())
        except (OSError, ValueError) as e:
            log.warning("%s cannot be read (%s); the MLflow parent run stays open", summary_file, e)
            return created
        html = (summary.get("report") or {}).get("html") or paths.reports / study / "report.html"
        with holding(StudyLock(url, study)):
            close_study_run(tracker, summary, study, workdir=workdir, storage=url)
            log_study_files(tracker, study, html, workdir=workdir, storage=url)
    return created


__all__ = [
    "best_model_key",
    "best_run_values",
    "close_study_run",
    "log_study_files",
    "mlflow_links",
    "mlflow_sync",
]
