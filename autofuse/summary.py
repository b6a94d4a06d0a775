"""The end of a search: ``summary.json`` and the best trial exported to ``best/``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import optuna

from autofuse._util import atomic_write_text, better
from autofuse.checkpoints import CheckpointStore
from autofuse.errors import ConfigError

log = logging.getLogger(__name__)

TS = optuna.trial.TrialState


def write_json(path: Path, doc: dict) -> None:
    atomic_write_text(path, json.dumps(doc, indent=2, default=str))


def _counts(trials: list[optuna.trial.FrozenTrial]) -> tuple[dict[str, int], dict[str, int]]:
    counts = {
        "completed": sum(t.state == TS.COMPLETE for t in trials),
        "pruned": sum(t.state == TS.PRUNED for t in trials),
        "failed": sum(t.state == TS.FAIL for t in trials),
    }
    reasons: dict[str, int] = {}
    for t in trials:
        if t.state == TS.PRUNED:
            r = t.user_attrs.get("reason", "pruned")
            reasons[r] = reasons.get(r, 0) + 1
    return counts, reasons


def _per_family(completed: list[optuna.trial.FrozenTrial], direction: str) -> dict[str, dict]:
    best: dict[str, dict] = {}
    for t in completed:
        fam = t.user_attrs.get("family", "?")
        if fam not in best or better(t.value, best[fam]["value"], direction):
            best[fam] = {
                "trial": t.number,
                "value": t.value,
                "method": t.user_attrs.get("method"),
                "point": t.user_attrs.get("point"),
                "test_metrics": t.user_attrs.get("test_metrics"),
            }
    return best


def write_summary(
    st: optuna.Study,
    store: CheckpointStore,
    dataset_info: dict,
    metric: str,
    direction: str,
    wall_time_s: float,
) -> dict[str, Any]:
    """Export the best trial to ``best/`` and write ``summary.json``; returns the summary."""
    trials = st.get_trials(deepcopy=False)
    counts, reasons = _counts(trials)
    summary: dict[str, Any] = {
        "study": st.study_name,
        "dataset": dataset_info,
        "metric": metric,
        "direction": direction,
        "trials": counts,
        "pruned_reasons": reasons,
        "wall_time_s": round(wall_time_s, 2),
        "best_trial": None,
    }
    completed = [t for t in trials if t.state == TS.COMPLETE]
    if completed:
        best = st.best_trial
        u = best.user_attrs
        summary.update(
            {
                "best_trial": best.number,
                "best_value": best.value,
                "spec": u.get("spec"),
                "val_metrics": u.get("val_metrics"),
                "test_metrics": u.get("test_metrics"),
                "n_params": u.get("n_params"),
                "latency_ms": u.get("latency_ms"),
                "per_family_best": _per_family(completed, direction),
                "baselines": {
                    t.user_attrs["baseline"]: {
                        "trial": t.number,
                        "value": t.value,
                        "test_metrics": t.user_attrs.get("test_metrics"),
                    }
                    for t in completed
                    if "baseline" in t.user_attrs
                },
            }
        )
        try:
            summary["best_dir"] = str(store.export_best(best.number))
        except ConfigError as e:  # e.g. a study resumed in another work directory
            log.warning("best trial %d not exported: %s", best.number, e)
            summary["best_dir"] = None
    write_json(store.study_dir / "summary.json", summary)
    return summary


__all__ = ["write_json", "write_summary"]
