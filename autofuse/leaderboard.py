"""Leaderboards and study listings from the SQL trial history (the CLI prints these)."""

from __future__ import annotations

import json
import logging
from typing import Any

import optuna

from autofuse._util import best_first, mask_url
from autofuse.checkpoints import CheckpointStore
from autofuse.errors import ConfigError
from autofuse.paths import Paths
from autofuse.storage import make_storage
from autofuse.storage.history import HistoryStore, reconcile, repairs
from autofuse.storage.lock import StudyLock, holding
from autofuse.storage.mlflow import MlflowTracker, default_tracking_uri

log = logging.getLogger(__name__)

COLUMNS = [
    "rank",
    "trial",
    "stage",
    "family",
    "method",
    "point",
    "encoders",
    "metric",
    "value",
    "test",
    "params",
    "latency_ms",
    "baseline",
]


def storage_url(storage: str | None, workdir: str | None = None) -> str:
    return storage or Paths.resolve(workdir).default_storage


def leaderboard(
    study: str,
    *,
    storage: str | None = None,
    workdir: str | None = None,
    by: str | None = None,
    top: int | None = None,
) -> list[dict[str, Any]]:
    """Completed trials ranked by the study's objective (best first).

    Args:
        by: ``"family"`` (or ``"method"``, ``"point"``) keeps only the best trial per group.
        top: keep the first ``top`` rows.
    """
    hs = HistoryStore(storage_url(storage, workdir), create=False)
    rec = hs.study(study)
    if rec is None:
        known = ", ".join(s.name for s in hs.studies()) or "none"
        raise ConfigError(f"no study {study!r} in {mask_url(hs.url)} (studies: {known})")
    done = [t for t in hs.trials(study) if t.status == "COMPLETE" and t.value is not None]
    done = best_first(done, lambda t: t.value, rec.direction or "maximize")
    if by:
        if by not in ("family", "method", "point"):
            raise ConfigError(f"--by {by!r}: choose family, method or point")
        seen, kept = set(), []
        for t in done:
            key = getattr(t, by) if by != "method" else f"{t.family}.{t.method}"
            if key not in seen:
                seen.add(key)
                kept.append(t)
        done = kept
    rows = []
    for rank, t in enumerate(done[:top] if top else done, start=1):
        rows.append(
            {
                "rank": rank,
                "trial": t.number,
                "stage": t.stage or "",
                "family": t.family,
                "method": t.method,
                "point": t.point,
                "encoders": ", ".join(f"{m}={e}" for m, e in (t.encoders or {}).items()),
                "metric": rec.metric,
                "value": t.value,
                "test": (t.test_metrics or {}).get(rec.metric),
                "params": t.n_params,
                "latency_ms": t.latency_ms,
                "baseline": t.baseline or "",
            }
        )
    return rows


def studies(*, storage: str | None = None, workdir: str | None = None) -> list[dict[str, Any]]:
    """Every study in the storage with its status and trial counts."""
    url = storage_url(storage, workdir)
    hs = HistoryStore(url, create=False)
    rdb = make_storage(url)
    out = []
    for s in optuna.get_all_study_summaries(rdb, include_best_trial=True):
        trials = hs.trials(s.study_name)
        # a record that disagrees with Optuna's final state (not repaired yet) counts as Optuna says
        sid = rdb.get_study_id_from_name(s.study_name)
        fixed = {
            rec.number: fields["status"]
            for rec, fields in repairs(trials, rdb.get_all_trials(sid, deepcopy=False))
        }
        counts: dict[str, int] = {}
        for t in trials:
            status = fixed.get(t.number, t.status)
            counts[status] = counts.get(status, 0) + 1
        status = "running" if counts.get("RUNNING") else "idle"
        out.append(
            {
                "study": s.study_name,
                "status": status,
                "trials": len(trials),
                "complete": counts.get("COMPLETE", 0),
                "pruned": counts.get("PRUNED", 0),
                "failed": counts.get("FAIL", 0),
                "running": counts.get("RUNNING", 0),
                "best": s.best_trial.value if s.best_trial else None,
                "metric": s.user_attrs.get("metric"),
                "dataset": (s.user_attrs.get("dataset") or {}).get("name"),
                "started": s.datetime_start.isoformat(timespec="seconds")
                if s.datetime_start
                else None,
            }
        )
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
    registered (once per best model) and its parent run ended FINISHED. Returns the runs created."""
    url = storage_url(storage, workdir)
    hs = HistoryStore(url, create=False)
    if hs.study(study) is None:
        raise ConfigError(f"no study {study!r} in {mask_url(hs.url)}")
    uri = mlflow_uri or default_tracking_uri(Paths.resolve(workdir).trials)
    tracker = MlflowTracker(uri, study)
    if not tracker.available:
        raise ConfigError(f"MLflow at {mask_url(uri)} is not reachable")
    tracker.start_study({}, {})
    st = optuna.load_study(study_name=study, storage=make_storage(url))
    reconcile(hs, study, st.get_trials(deepcopy=False))
    created = tracker.sync(
        hs.trials(study), on_run=lambda n, rid: hs.record_trial(study, n, mlflow_run_id=rid)
    )
    store = CheckpointStore(Paths.resolve(workdir).study_dir(study))
    summary_file = store.study_dir / "summary.json"
    running = st.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    if summary_file.is_file() and not running:
        try:
            summary = json.loads(summary_file.read_text())
        except (OSError, ValueError) as e:
            log.warning("%s cannot be read (%s); the MLflow parent run stays open", summary_file, e)
            return created
        with holding(StudyLock(url, study)):
            close_study_run(tracker, store, summary, study)
    return created


def best_model_key(summary: dict) -> str | None:
    """Which best model a summary describes (``trial:<n>``, ``single:<n>`` or
    ``ensemble:<n>,<m>,...`` for a staged search's winner); None without one."""
    winner = summary.get("winner")
    if winner:
        return f"{winner['kind']}:{','.join(str(n) for n in winner['trials'])}"
    best = summary.get("best_trial")
    return None if best is None else f"trial:{best}"


def close_study_run(tracker: Any, store: CheckpointStore, summary: dict, study: str) -> None:
    """End the study's MLflow parent run: its best model logged and registered under the
    study's name (once per best model: a second search or sync finds it there), the best
    metrics, status FINISHED. Callers hold the study lock (two searches finishing at once)."""
    if not tracker.available:
        return
    key = best_model_key(summary)
    best = None
    if key is not None:
        try:
            best = store.load_best()
        except ConfigError as e:  # MLflow trouble must not lose the search's results
            log.warning("could not log the best model to MLflow: %s", e)
    if best is not None:
        # mlflow.pytorch warns that pickled models run code when loaded; this is our own model
        pt_log = logging.getLogger("mlflow.pytorch")
        level, pt_log.level = pt_log.level, logging.ERROR
        try:
            tracker.log_best_model(best[2], store.best_dir / "architecture.json", study, key=key)
        finally:
            pt_log.setLevel(level)
    metrics = {f"best_val_{k}": v for k, v in (summary.get("val_metrics") or {}).items()}
    metrics.update({f"best_test_{k}": v for k, v in (summary.get("test_metrics") or {}).items()})
    tracker.end_study("FINISHED", metrics)
