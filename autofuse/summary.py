"""The end of a search: ``summary.json`` and the best trial exported to ``best/``.

Every figure in the summary says what it is (``*_label``): a **selection estimate** (a stage-2
trial scored by K-fold cross-validation: its value is the mean over the folds, its val metrics
are out of fold), **validation** (the single validation split), **in-sample** (a greedy ensemble
chosen and scored on the same validation predictions) or **test**; ``selection`` holds Spearman's
rho of the stage-2 designs' selection figures against their test scores (the test split chose
nothing). The labels mirror :mod:`autofuse.report.labels` (a sibling layer, not importable here).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import optuna

from autofuse._util import atomic_write_text, best_first, better, json_text
from autofuse.checkpoints import CheckpointStore
from autofuse.errors import ConfigError
from autofuse.metrics import spearman

log = logging.getLogger(__name__)

TS = optuna.trial.TrialState


def write_json(path: Path, doc: dict) -> None:
    """Write ``doc`` as strict JSON (non-finite numbers as ``null``), atomically."""
    atomic_write_text(path, json_text(doc))


def _skipped(t: optuna.trial.FrozenTrial) -> bool:
    return t.state == TS.FAIL and t.user_attrs.get("reason") == "skipped"


def _counts(trials: list[optuna.trial.FrozenTrial]) -> tuple[dict[str, int], dict[str, int]]:
    counts = {
        "completed": sum(t.state == TS.COMPLETE for t in trials),
        "pruned": sum(t.state == TS.PRUNED for t in trials),
        "failed": sum(t.state == TS.FAIL and not _skipped(t) for t in trials),
    }
    skipped = sum(_skipped(t) for t in trials)
    if skipped:  # queued, never run: their stage had ended (autofuse.stages.skip_queued)
        counts["skipped"] = skipped
    reasons: dict[str, int] = {}
    for t in trials:
        if t.state == TS.PRUNED:
            r = t.user_attrs.get("reason", "pruned")
            reasons[r] = reasons.get(r, 0) + 1
    return counts, reasons


# ---- what each figure is ------------------------------------------------------------------------


def _selection(t: optuna.trial.FrozenTrial) -> dict | None:
    """The trial's ``selection`` record when it is a K-fold CV estimate (else: validation)."""
    sel = t.user_attrs.get("selection")
    return sel if isinstance(sel, dict) and sel.get("kind") == "cv" else None


def value_label(t: optuna.trial.FrozenTrial) -> str:
    """What a trial's value (and its val metrics) is."""
    sel = _selection(t)
    if sel is not None:
        return f"selection estimate (CV, {sel.get('folds') or '?'} folds)"
    return "validation (single split)"


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def selection_vs_test(completed: list[optuna.trial.FrozenTrial], metric: str) -> dict[str, Any]:
    """Spearman's rho of the designs' selection figures (the trials' values) against their test
    metric: a staged search's completed stage-2 trials, else every completed trial."""
    staged = any(t.user_attrs.get("stage") for t in completed)
    pool = [t for t in completed if t.user_attrs.get("stage", "fusion") == "fusion" or not staged]
    pairs = [
        (float(t.value), float(test), t)
        for t in pool
        if _finite(t.value)
        and _finite(test := (t.user_attrs.get("test_metrics") or {}).get(metric))
    ]
    cv = [_selection(t) is not None for _, _, t in pairs]
    folds = {(_selection(t) or {}).get("folds") for _, _, t in pairs if _selection(t)}
    return {
        "spearman_selection_test": spearman([x for x, _, _ in pairs], [y for _, y, _ in pairs]),
        "n_designs": len(pairs),
        "kind": "cv" if cv and all(cv) else ("mixed" if any(cv) else "holdout"),
        "folds": folds.pop() if len(folds) == 1 else None,
        "metric": metric,
        "test_chose_nothing": True,
    }


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
                "value_label": value_label(t),
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
    winner: dict | None = None,
) -> dict[str, Any]:
    """Write ``summary.json`` (and, for a single-stage search, export the best trial to
    ``best/``); returns the summary. ``winner``: a staged search's result (already exported)."""
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
    stages = _per_stage(trials)
    plan = st.user_attrs.get("finalist_plan")  # stage 3's size, or why it was skipped
    if plan is not None:
        stages.setdefault("finalist", {"trials": 0, "completed": 0, "pruned": 0, "time_s": 0.0})[
            "plan"
        ] = plan
        if plan.get("skipped"):
            summary["stage3_skipped"] = plan["note"]
    if stages:
        summary["stages"] = stages
    note = _all_timed_out(trials)
    if note:
        summary["warning"] = note
    completed = [t for t in trials if t.state == TS.COMPLETE]
    if not completed:
        write_json(store.study_dir / "summary.json", summary)
        return summary
    best = _best(st, completed, winner)
    u = best.user_attrs
    summary.update(
        {
            "best_trial": best.number,
            "best_value": best.value,
            "best_value_label": value_label(best),
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
                    "value_label": value_label(t),
                    "test_metrics": t.user_attrs.get("test_metrics"),
                }
                for t in completed
                if "baseline" in t.user_attrs
            },
            "test_metrics_label": "test",
            "selection": selection_vs_test(completed, metric),
        }
    )
    if winner is not None:
        summary["winner"] = {**winner, "val_label": _winner_label(winner, best)}
        exported = store.best_dir.exists() and winner.get("exported", True)
        summary["best_dir"] = str(store.best_dir) if exported else None
        if winner["kind"] == "ensemble":
            summary["best_value"] = winner["val"]
            summary["best_value_label"] = summary["winner"]["val_label"]
            summary["val_metrics"] = {metric: winner["val"]}
            summary["test_metrics"] = winner["test"]
    else:
        try:
            summary["best_dir"] = str(store.export_best(best.number))
        except ConfigError as e:  # e.g. a study resumed in another work directory
            log.warning("best trial %d not exported: %s", best.number, e)
            summary["best_dir"] = None
    write_json(store.study_dir / "summary.json", summary)
    store.publish(store.study_dir / "summary.json")  # for a report made on another host
    return summary


def _winner_label(winner: dict, best: optuna.trial.FrozenTrial) -> str:
    """What the winner's ``val`` is: an ensemble's is in-sample (chosen and weighted on the
    validation predictions it is scored on) unless the winner records a CV ``selection``."""
    if winner.get("kind") != "ensemble":
        return value_label(best)
    if winner.get("val_kind") == "out-of-sample":
        return "validation (ensemble weights fitted out of fold, on other rows)"
    sel = winner.get("selection")
    if isinstance(sel, dict) and sel.get("kind") == "cv":
        return f"selection estimate (CV, {sel.get('folds') or '?'} folds)"
    return "in-sample (validation used to choose the ensemble)"


def _best(st: optuna.Study, completed: list, winner: dict | None) -> optuna.trial.FrozenTrial:
    """The trial the summary describes: the winner's (best) model, else Optuna's best."""
    if winner is not None:
        by_number = {t.number: t for t in completed}
        return by_number[winner["trials"][0]]
    searched = [t for t in completed if t.user_attrs.get("stage") != "unimodal"]
    if len(searched) < len(completed) and searched:  # a staged search without a winner
        return best_first(searched, lambda t: t.value, st.direction.name.lower())[0]
    return st.best_trial


def _per_stage(trials: list) -> dict[str, dict]:
    """Trials and time per stage of a staged search (empty for a single-stage one)."""
    out: dict[str, dict] = {}
    for t in trials:
        stage = t.user_attrs.get("stage")
        if stage is None:
            continue
        d = out.setdefault(stage, {"trials": 0, "completed": 0, "pruned": 0, "time_s": 0.0})
        d["trials"] += 1
        d["completed"] += t.state == TS.COMPLETE
        d["pruned"] += t.state == TS.PRUNED
        if t.datetime_start and t.datetime_complete:
            d["time_s"] += (t.datetime_complete - t.datetime_start).total_seconds()
        if stage == "finalist" and t.state == TS.COMPLETE:  # did the fine-tunes train?
            d.setdefault("epochs_run", []).append(t.user_attrs.get("epochs_run"))
    return out


def _all_timed_out(trials: list) -> str | None:
    """A note when every finished trial reached its time limit (the budget is too small)."""
    ended = [t for t in trials if t.state in (TS.COMPLETE, TS.PRUNED)]
    if ended and all(t.user_attrs.get("reason") == "timeout" for t in ended):
        return (
            f"every trial ({len(ended)}) reached its time limit: the results are low-fidelity; "
            "give the search more time (--time-budget / --trial-timeout) or use a smaller space"
        )
    return None


__all__ = ["selection_vs_test", "value_label", "write_json", "write_summary"]
