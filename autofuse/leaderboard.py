"""Leaderboards and study listings from the SQL trial history (the CLI prints these; the
study's MLflow parent run logs the leaderboard too, see :mod:`autofuse.mlflow_study`)."""

from __future__ import annotations

import logging
from typing import Any

import optuna

from autofuse._util import best_first, mask_url
from autofuse.errors import ConfigError
from autofuse.paths import Paths
from autofuse.storage import make_storage
from autofuse.storage.history import HistoryStore, repairs

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
