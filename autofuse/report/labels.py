"""What each figure of the report is: a selection estimate (cross-validation), validation or test.

A trial's ``value`` means different things depending on how it was scored. A stage-2 (fusion
search) trial whose ``selection`` record has ``kind == "cv"`` carries the mean over K folds of the
held-out fold metric: a **selection estimate** (its ``val_*`` metrics are computed on the pooled
out-of-fold predictions, a selection estimate too). A trial without a ``selection`` record, or
with ``kind == "holdout"`` (``stages.folds: 1``), was scored on the validation split: **validation
(single split)**. A greedy ensemble chosen and weighted on the validation predictions it is then
scored on is **in-sample**. ``test_*`` metrics are **test**, and the test split chooses nothing.

The ``selection`` record (SQL ``autofuse_trials.selection``, or the trial's Optuna user attribute
of that name): ``{"kind": "cv" | "holdout", "folds": K, "metric": ..., "scores": [per fold],
"mean": ..., "std": ..., "loss": [per fold] | null}``. A record without one reads as holdout.

:func:`collect_selection` gathers the numbers of the report's "Selection versus test" section:
the stage-2 designs' (selection, test) pairs and their Spearman rank correlation, and the winner,
the best in-study baseline and the best unimodal model with their selection figure and test.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from autofuse._util import best_first, finite
from autofuse.metrics import spearman
from autofuse.report.rows import Row
from autofuse.report.staged import FUSION, UNIMODAL, stage_of

#: the kinds of figure a trial's value (or an ensemble's) can be
CV, VALIDATION, IN_SAMPLE, TEST = "cv", "validation", "in-sample", "test"
#: the study-level kind of the stage-2 designs' values
HOLDOUT, MIXED = "holdout", "mixed"


# ---- one record --------------------------------------------------------------------------------


def read_selection(raw: Any) -> dict[str, Any] | None:
    """A trial's ``selection`` record, normalised; ``None`` when absent or not understood."""
    if not isinstance(raw, dict) or raw.get("kind") not in (CV, HOLDOUT):
        return None
    scores = [float(x) for x in raw.get("scores") or [] if finite(x)]
    loss = raw.get("loss")
    mean = raw.get("mean")
    std = raw.get("std")
    if not finite(mean) and scores:
        mean = statistics.fmean(scores)
    if not finite(std) and len(scores) > 1:
        std = statistics.pstdev(scores)
    folds = raw.get("folds")
    return {
        "kind": raw["kind"],
        "folds": int(folds) if finite(folds) else (len(scores) or None),
        "metric": raw.get("metric"),
        "scores": scores,
        "mean": float(mean) if finite(mean) else None,
        "std": float(std) if finite(std) else None,
        "loss": [float(x) for x in loss if finite(x)] if isinstance(loss, list) else None,
    }


def value_kind(r: Row) -> str:
    """What a trial's value is: :data:`CV` (a K-fold selection estimate) or :data:`VALIDATION`."""
    return CV if r.selection is not None and r.selection["kind"] == CV else VALIDATION


def folds(r: Row) -> int | None:
    """The number of folds behind a trial's value (``None``: a single validation split)."""
    return r.selection["folds"] if value_kind(r) == CV else None


def value_std(r: Row) -> float | None:
    """The standard deviation over folds of a trial's selection estimate (``None`` without)."""
    return r.selection["std"] if value_kind(r) == CV else None


def label(kind: str, k: int | None = None) -> str:
    """The long label of a figure of ``kind`` (:data:`CV`, :data:`VALIDATION`, ...)."""
    if kind == CV:
        return f"selection estimate (CV, {k or '?'} folds)"
    if kind == IN_SAMPLE:
        return "in-sample (validation used to choose the ensemble)"
    if kind == TEST:
        return "test"
    if kind == MIXED:
        return "selection estimate (CV) or validation, per trial"
    return "validation (single split)"


def short(kind: str, k: int | None = None) -> str:
    """The short label of a figure of ``kind`` (a table cell, a legend entry)."""
    if kind == CV:
        return f"CV ({k or '?'} folds)"
    if kind == IN_SAMPLE:
        return "in-sample val"
    if kind == MIXED:
        return "CV or val"
    return {TEST: "test"}.get(kind, "val")


def row_label(r: Row) -> str:
    return label(value_kind(r), folds(r))


def row_short(r: Row) -> str:
    return short(value_kind(r), folds(r))


def study_kind(rows: Sequence[Row]) -> tuple[str, int | None]:
    """The kind of the values of ``rows`` as one: :data:`CV` (with its folds), :data:`HOLDOUT` or
    :data:`MIXED` (some trials cross-validated, some not, e.g. a study resumed with other folds)."""
    kinds = {value_kind(r) for r in rows}
    ks = sorted({folds(r) for r in rows if value_kind(r) == CV})
    if kinds == {CV}:
        return CV, ks[-1] if len(ks) == 1 else None
    return (MIXED, None) if CV in kinds else (HOLDOUT, None)


def study_label(rows: Sequence[Row]) -> str:
    kind, k = study_kind(rows)
    return label(VALIDATION if kind == HOLDOUT else kind, k)


def study_short(rows: Sequence[Row]) -> str:
    kind, k = study_kind(rows)
    return short(VALIDATION if kind == HOLDOUT else kind, k)


def best_kind(best: dict | None) -> tuple[str, int | None]:
    """The kind of the report's best design's value (``best["value_kind"]``, ``["folds"]``)."""
    b = best or {}
    return b.get("value_kind") or VALIDATION, b.get("folds")


# ---- the Spearman rank correlation -------------------------------------------------------------


# ---- the section's numbers ---------------------------------------------------------------------


def designs(rows: Sequence[Row], staged: bool) -> list[Row]:
    """The designs the search ranked: a staged study's completed stage-2 trials (all completed
    trials of a single-stage one)."""
    pool = [r for r in rows if stage_of(r) == FUSION] if staged else list(rows)
    return [r for r in pool if r.status == "COMPLETE" and finite(r.value)]


def _entry(r: Row, role: str, metric: str) -> dict[str, Any]:
    return {
        "role": role,
        "trial": r.number,
        "what": r.baseline or (r.unimodal and f"{r.unimodal} alone") or f"{r.fusion}@{r.point}",
        "stage": r.stage,
        "kind": value_kind(r),
        "label": row_label(r),
        "folds": folds(r),
        "selection": r.value,
        "std": value_std(r),
        "test": r.test_metrics.get(metric),
    }


def collect_selection(
    rows: list[Row], best: dict | None, staged: bool, metric: str, direction: str
) -> dict[str, Any]:
    """The "Selection versus test" numbers (JSON-able).

    ``points``: one per completed stage-2 design with a test score: its selection figure and test.
    ``spearman_selection_test``: Spearman's rho over them (``None`` when undefined). ``compare``:
    the winner (the report's best design), the best in-study baseline and the best unimodal model,
    each with its selection figure, its kind (label), ± std over folds when known, and test.
    """
    ds = designs(rows, staged)
    pts = [r for r in ds if finite(r.test_metrics.get(metric))]
    kind, k = study_kind(ds)
    xs = [float(r.value) for r in pts]
    ys = [float(r.test_metrics[metric]) for r in pts]
    b = best or {}
    chosen = {int(m["design"]) for m in b.get("members") or [] if m.get("design") is not None}
    if b.get("design") is not None:
        chosen.add(int(b["design"]))
    if not chosen and b.get("trial") is not None:
        chosen.add(int(b["trial"]))
    oracle = best_first(pts, lambda r: r.test_metrics[metric], direction)
    compare: list[dict[str, Any]] = []
    if best:
        bk, bf = best_kind(best)
        compare.append(
            {
                "role": "winner",
                "trial": "+".join(str(n) for n in b.get("trials") or [b["trial"]]),
                "what": "ensemble"
                if b.get("kind") == "ensemble"
                else f"{b['fusion']}@{b['point']}",
                "stage": b.get("stage"),
                "kind": bk,
                "label": label(bk, bf),
                "folds": bf,
                "selection": b.get("value"),
                "std": b.get("value_std"),
                "test": (b.get("test_metrics") or {}).get(metric),
            }
        )
    bases = best_first([r for r in ds if r.baseline], lambda r: r.value, direction)
    if bases:
        compare.append(_entry(bases[0], "best baseline", metric))
    uni = [r for r in rows if r.status == "COMPLETE" and finite(r.value)]
    uni = [r for r in uni if stage_of(r) == UNIMODAL] if staged else []
    if uni:
        compare.append(
            _entry(best_first(uni, lambda r: r.value, direction)[0], "best unimodal", metric)
        )
    return {
        "kind": kind,
        "folds": k,
        "label": label(VALIDATION if kind == HOLDOUT else kind, k),
        "n_designs": len(pts),
        "spearman_selection_test": spearman(xs, ys),
        "points": [
            {
                "trial": r.number,
                "selection": x,
                "std": value_std(r),
                "test": y,
                "baseline": r.baseline,
                "winner": r.number in chosen,
            }
            for r, x, y in zip(pts, xs, ys, strict=True)
        ],
        "winner_designs": sorted(chosen & {r.number for r in pts}),
        "oracle": {"trial": oracle[0].number, "test": ys[pts.index(oracle[0])]} if oracle else None,
        "compare": compare,
    }


__all__ = [
    "CV",
    "HOLDOUT",
    "IN_SAMPLE",
    "MIXED",
    "TEST",
    "VALIDATION",
    "best_kind",
    "collect_selection",
    "designs",
    "folds",
    "label",
    "read_selection",
    "row_label",
    "row_short",
    "short",
    "spearman",
    "study_kind",
    "study_label",
    "study_short",
    "value_kind",
    "value_std",
]
