"""The study's result: the winning finalist design, and a greedy ensemble of the finalist models
when it beats it (Caruana et al. 2004); the winner written to ``best/``.

Designs ranked by cross-validation (``stages.folds`` > 1) are compared with the
one-standard-error rule, and the ensemble is weighted on their out-of-fold outputs, never on the
outputs it is scored on; with ``stages.folds: 1`` the validation split decides both (and an
ensemble's figure is in-sample). See :func:`choose_winner`.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from autofuse._util import best_first, better, finite, sort_sign
from autofuse.checkpoints import CheckpointStore
from autofuse.ensemble import combine, greedy_selection
from autofuse.export import write_ensemble_export
from autofuse.metrics import compute_metrics
from autofuse.stages import FINALIST, stage_of

TS = optuna.trial.TrialState


@dataclass
class Winner:
    """The study's result: one design's best seed, or a greedy ensemble of finalist models."""

    kind: str  # "single" | "ensemble"
    trials: list[int]
    weights: list[float]
    design: int  # the winning stage-2 design
    val: float
    test: dict[str, float]
    why: str
    designs: list[dict] = field(default_factory=list)  # per finalist design: seeds' values
    #: what ``val`` is: "validation" (a finalist's own validation metric), "out-of-sample" (an
    #: ensemble whose weights were fitted on other rows' out-of-fold outputs) or "in-sample" (an
    #: ensemble chosen and scored on the same validation outputs: ``stages.folds: 1``)
    val_kind: str = "validation"
    #: the winning design's cross-validated selection estimate (``stages.folds`` > 1)
    selection: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


#: a design within this many standard errors of the best cross-validated design is as good:
#: the simplest of them wins (Breiman's one-standard-error rule)
ONE_SE = 1.0


def choose_winner(
    st: optuna.Study,
    store: Any,
    task: str,
    y_raw: np.ndarray,
    splits: dict,
    metric: str,
    ensemble: bool = True,
) -> Winner | None:
    """The winning design among the finalists, then a greedy ensemble of the finalist models
    when it beats it (``ensemble``).

    Designs ranked by cross-validation (``stages.folds`` > 1): the one-standard-error rule. The
    best design's mean over folds minus one standard error of that mean (its fold-to-fold std
    over sqrt(folds)) is the bar; of the designs at or above it, the one with the fewest
    parameters wins, then the lowest latency (an advantage inside the fold noise does not buy
    a bigger model). The ensemble's weights are fitted (Caruana) on the designs' out-of-fold
    outputs of the pooled rows outside the validation split, and the weighted finalist models
    are scored on the validation rows: a figure the weights never saw.

    Designs ranked on the validation split (``stages.folds: 1``): the best mean validation
    metric over seeds (ties: fewer parameters, then lower latency), and an ensemble chosen and
    scored on the same validation outputs (its figure is in-sample, and labelled so)."""
    direction = st.direction.name.lower()
    sign = sort_sign(direction)
    trials = {t.number: t for t in st.get_trials(deepcopy=False)}
    done = [
        t
        for t in trials.values()
        if t.state == TS.COMPLETE and stage_of(t) == FINALIST and finite(t.value)
    ]
    if not done:
        return None
    by_design: dict[int, list] = {}
    for t in done:
        by_design.setdefault(int(t.user_attrs["finalist_of"]), []).append(t)
    designs = []
    for d, ts in by_design.items():
        vals = [t.value for t in ts]
        sel = trials[d].user_attrs.get("selection") if d in trials else None
        designs.append(
            {
                "design": d,
                "trials": [t.number for t in ts],
                "values": vals,
                "mean": float(np.mean(vals)),
                "std": float(np.std(vals)),
                "n_params": min(t.user_attrs.get("n_params") or 0 for t in ts),
                "latency_ms": min(t.user_attrs.get("latency_ms") or 0.0 for t in ts),
                **({"cv": _cv_summary(sel)} if sel and sel.get("kind") == "cv" else {}),
            }
        )
    cv = all("cv" in g for g in designs)
    if cv:
        win, why = _one_se(designs, sign, metric)
    else:
        designs.sort(key=lambda g: (sign * g["mean"], g["n_params"], g["latency_ms"]))
        win = designs[0]
        why = (
            f"design {win['design']} has the best mean validation {metric} over its seeds "
            f"({win['mean']:.4f} +/- {win['std']:.4f})"
        )
    best_seed = min(by_design[win["design"]], key=lambda t: (sign * t.value, t.number))
    single = Winner(
        "single",
        [best_seed.number],
        [1.0],
        win["design"],
        float(best_seed.value),
        dict(best_seed.user_attrs.get("test_metrics") or {}),
        f"{why}; its best seed is trial {best_seed.number}",
        designs,
        selection=win.get("cv"),
    )
    if not ensemble:
        single.why += "; no ensemble (stages.ensemble: false)"
        return single
    if cv:
        return _oof_ensemble(single, by_design, store, task, y_raw, splits, metric, direction)
    return _validation_ensemble(single, done, store, task, y_raw, splits, metric, direction)


def _cv_summary(sel: dict) -> dict:
    n = int(sel.get("folds_done") or len(sel.get("scores") or []) or 1)
    return {
        "mean": float(sel["mean"]),
        "std": float(sel["std"]),
        "folds": n,
        # one fold (a trial stopped by its time limit) says nothing of the fold-to-fold noise
        "se": float(sel["std"]) / math.sqrt(n) if n > 1 else None,
        "loss_mean": sel.get("loss_mean"),
    }


def _one_se(designs: list[dict], sign: float, metric: str) -> tuple[dict, str]:
    """The simplest design within one standard error of the best cross-validated one (a best
    design with one fold done borrows the median standard error of the others)."""
    best = min(designs, key=lambda g: (sign * g["cv"]["mean"], g["n_params"]))
    known = [g["cv"]["se"] for g in designs if g["cv"]["se"] is not None]
    se = (
        best["cv"]["se"]
        if best["cv"]["se"] is not None
        else (float(np.median(known)) if known else 0.0)
    )
    best["cv"]["se"] = se
    bar = best["cv"]["mean"] + sign * ONE_SE * se  # sign < 0: maximise
    close = [g for g in designs if sign * g["cv"]["mean"] <= sign * bar + 1e-12]
    win = min(close, key=lambda g: (g["n_params"], g["latency_ms"], sign * g["cv"]["mean"]))
    c = win["cv"]
    why = (
        f"design {win['design']}: cross-validated {metric} {c['mean']:.4f} +/- {c['std']:.4f} "
        f"over {c['folds']} folds (selection estimate)"
    )
    if win is best:
        why += f", the best of {len(designs)} finalist designs"
    else:
        why += (
            f", within one standard error of the best design {best['design']} "
            f"({best['cv']['mean']:.4f}, SE {best['cv']['se']:.4f}) with fewer parameters "
            f"({win['n_params']:,} against {best['n_params']:,}): one-standard-error rule"
        )
    return win, why


def select_ensemble(
    fit_outputs: list[np.ndarray],
    y_fit: np.ndarray,
    score_outputs: list[np.ndarray],
    y_score: np.ndarray,
    task: str,
    metric: str,
    direction: str,
) -> tuple[list[float], float]:
    """Greedy ensemble weights fitted on ``fit_outputs`` (out-of-fold outputs of rows outside
    the scoring rows), and the weighted ensemble's ``metric`` on ``score_outputs``: the score
    never comes from the outputs the weights were chosen on."""
    weights, _ = greedy_selection(fit_outputs, y_fit, task, metric, direction)
    used = [(o, w) for o, w in zip(score_outputs, weights, strict=True) if w > 0]
    out = combine([o for o, _ in used], [w for _, w in used], task)
    return weights, float(compute_metrics(task, y_score, out)[metric])


def _oof_ensemble(
    single: Winner,
    by_design: dict[int, list],
    store: Any,
    task: str,
    y_raw: np.ndarray,
    splits: dict,
    metric: str,
    direction: str,
) -> Winner:
    """A greedy ensemble of the finalist designs (each its best seed's model), weighted on the
    designs' out-of-fold outputs outside the validation rows, scored on the validation rows."""
    sign = sort_sign(direction)
    members = {d: min(ts, key=lambda t: (sign * t.value, t.number)) for d, ts in by_design.items()}
    readable = store.readable_outputs([*members, *(t.number for t in members.values())])
    usable = [d for d, t in sorted(members.items()) if t.number in readable and d in readable]
    usable = [d for d in usable if "oof" in readable[d]]
    if len(usable) < 2:
        single.why += "; no ensemble (fewer than 2 finalist designs with out-of-fold outputs)"
        return single
    # the rows every design predicted out of fold (designs over frozen pretrained encoders pool
    # every training row, those over stage-1-trained ones only the fusion rows), less validation
    rows = readable[usable[0]]["oof_rows"]
    for d in usable[1:]:
        rows = np.intersect1d(rows, readable[d]["oof_rows"])
    rows = rows[~np.isin(rows, splits["val"])]
    if not len(rows):
        single.why += "; no ensemble (the designs share no out-of-fold rows)"
        return single
    fit = [readable[d]["oof"][np.searchsorted(readable[d]["oof_rows"], rows)] for d in usable]
    weights, score = select_ensemble(
        fit,
        y_raw[rows],
        [readable[members[d].number]["val"] for d in usable],
        y_raw[splits["val"]],
        task,
        metric,
        direction,
    )
    if not _beats(score, single.val, direction):
        single.why += (
            f"; the greedy ensemble weighted out of fold ({score:.4f} on validation) did not "
            f"beat it ({single.val:.4f})"
        )
        return single
    used = [(members[d], w) for d, w in zip(usable, weights, strict=True) if w > 0]
    why = (
        f"a greedy ensemble of {len(used)} finalist models, weighted on the designs' "
        f"out-of-fold outputs, reaches validation {metric} {score:.4f} (rows the weights never "
        f"saw), better than the single winner ({single.val:.4f}: {single.why})"
    )
    return _ensemble(single, used, readable, score, why, "out-of-sample", task, y_raw, splits)


def _validation_ensemble(
    single: Winner,
    done: list,
    store: Any,
    task: str,
    y_raw: np.ndarray,
    splits: dict,
    metric: str,
    direction: str,
) -> Winner:
    """``stages.folds: 1``: a greedy ensemble of every finalist model, chosen on validation."""
    readable = store.readable_outputs(t.number for t in done)  # a damaged file: a warning
    members = [t for t in sorted(done, key=lambda t: t.number) if t.number in readable]
    if len(members) < 2:
        return single
    outs = [readable[t.number] for t in members]
    weights, score = greedy_selection(
        [o["val"] for o in outs], y_raw[splits["val"]], task, metric, direction
    )
    best_single = best_first(members, lambda t: t.value, direction)[0].value
    if not _beats(score, best_single, direction):
        single.why += (
            f"; the greedy ensemble ({score:.4f}) did not beat the best single finalist "
            f"({best_single:.4f}) on validation"
        )
        return single
    used = [(t, w) for t, w in zip(members, weights, strict=True) if w > 0]
    why = (
        f"a greedy ensemble of {len(used)} finalist models reaches validation {metric} "
        f"{score:.4f} (in-sample: chosen on the same validation outputs), better than the best "
        f"single model ({best_single:.4f})"
    )
    return _ensemble(single, used, readable, score, why, "in-sample", task, y_raw, splits)


def _beats(score: float, reference: float, direction: str) -> bool:
    """An ensemble replaces the single winner only when strictly better."""
    return better(score, reference, direction) and abs(score - reference) >= 1e-12


def _ensemble(
    single: Winner,
    used: list,
    readable: dict[int, dict],
    score: float,
    why: str,
    val_kind: str,
    task: str,
    y_raw: np.ndarray,
    splits: dict,
) -> Winner:
    """The ensemble winner of the members ``used`` (``(trial, weight)`` pairs, weights > 0)."""
    test = _ensemble_test(task, y_raw, splits, [readable[t.number] for t, _ in used], used)
    return Winner(
        "ensemble",
        [t.number for t, _ in used],
        [float(w) for _, w in used],
        single.design,
        float(score),
        test,
        why,
        single.designs,
        val_kind=val_kind,
        selection=single.selection,
    )


def _ensemble_test(
    task: str, y_raw: np.ndarray, splits: dict, outs: list[dict], used: list
) -> dict[str, float]:
    y_test = y_raw[splits["test"]]
    if not len(y_test):
        return {}
    return compute_metrics(
        task, y_test, combine([o["test"] for o in outs], [w for _, w in used], task)
    )


def export_winner(store: CheckpointStore, winner: Winner, meta: dict[str, Any]) -> Path:
    """Write the winner into ``best/``: the single model, or the ensemble (``ensemble.json`` and
    one full model per member, see :func:`autofuse.export.write_ensemble_export`)."""
    if winner.kind == "single":
        return store.export_best(winner.trials[0])
    with tempfile.TemporaryDirectory(prefix=".members-", dir=store.study_dir) as tmp:
        members = [store.export_full(n, Path(tmp) / f"trial_{n}") for n in winner.trials]
        meta = {**meta, "trials": winner.trials, "why": winner.why}
        write_ensemble_export(store.best_dir, members, winner.weights, meta)
    return store.publish_best()


__all__ = ["ONE_SE", "Winner", "choose_winner", "export_winner", "select_ensemble"]
