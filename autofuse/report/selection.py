"""The report's "Selection versus test" section: was the selection informative?

The search chose its designs by a selection figure (a K-fold cross-validation estimate, or the
validation split); the test split chose nothing. This section shows, for the winner, the best
in-study baseline and the best unimodal model, that selection figure next to the test score, and
a scatter of selection against test over every completed stage-2 design with Spearman's rho (the
numbers: :func:`autofuse.report.labels.collect_selection`).
"""

from __future__ import annotations

import numpy as np

from autofuse.report.blocks import KV, P, Section, Table, fmt
from autofuse.report.collect import ReportData
from autofuse.report.figures import C_BASE, C_BEST, C_MAIN, _axes, _png
from autofuse.report.labels import HOLDOUT, VALIDATION, label

SECTION_ID, SECTION_TITLE = "selection", "Selection versus test"


def _with_std(v: float | None, std: float | None) -> str:
    return f"{fmt(v)} ± {fmt(std)}" if v is not None and std is not None else fmt(v)


def rho_text(s: dict) -> str:
    """Spearman's rho in words (``undefined`` with fewer than 3 designs or a constant score)."""
    rho = s.get("spearman_selection_test")
    n = s.get("n_designs", 0)
    if rho is None:
        return f"Spearman's rho undefined ({n} designs; needs 3 or more with varying scores)"
    return f"Spearman's rho = {rho:+.2f} over {n} designs"


def selection_header(s: dict, metric: str) -> str:
    """The selection column's header: ``selection estimate (CV, K folds) / validation``."""
    k = s.get("folds")
    return f"selection estimate (CV, {k or 'K'} folds) / validation {metric}"


def compare_table(d: ReportData) -> Table:
    """The winner, the best in-study baseline and the best unimodal model: selection and test."""
    s = d.selection or {}
    rows = [
        [c["role"], str(c["trial"]), c["what"], c["label"]]
        + [_with_std(c["selection"], c["std"]), fmt(c["test"])]
        for c in s.get("compare", [])
    ]
    return Table(
        ["model", "trial", "design", "figure", selection_header(s, d.metric), f"test {d.metric}"],
        rows,
        name="selection_vs_test",
        numeric={1, 4, 5},
        highlight={0} if rows and rows[0][0] == "winner" else set(),
    )


def fig_selection(d: ReportData) -> bytes | None:
    """Selection figure (x) against test (y) of every completed stage-2 design; the winner's
    design(s), the baselines and the best design by test (the oracle) marked."""
    s = d.selection or {}
    pts = s.get("points") or []
    if not pts:
        return None
    fig, ax = _axes(7, 4.6)
    plain = [p for p in pts if not p["baseline"] and not p["winner"]]
    base = [p for p in pts if p["baseline"] and not p["winner"]]
    win = [p for p in pts if p["winner"]]
    for group, style, name in (
        (plain, {"color": C_MAIN, "s": 24, "alpha": 0.75}, "searched design"),
        (base, {"color": C_BASE, "marker": "s", "s": 34}, "hand-designed baseline"),
        (win, {"color": C_BEST, "marker": "*", "s": 170, "zorder": 5}, "winner's design"),
    ):
        if not group:
            continue
        xs = [p["selection"] for p in group]
        ys = [p["test"] for p in group]
        err = [p["std"] if p["std"] is not None else np.nan for p in group]
        if any(np.isfinite(err)):
            ax.errorbar(xs, ys, xerr=err, fmt="none", ecolor="#BBBBBB", lw=0.8, zorder=1)
        ax.scatter(xs, ys, label=name, **{"zorder": 3, **style})
    oracle = s.get("oracle")
    if oracle:
        p = next(p for p in pts if p["trial"] == oracle["trial"])
        ax.scatter(
            [p["selection"]],
            [p["test"]],
            s=260,
            facecolor="none",
            edgecolor="#000000",
            lw=1.3,
            zorder=4,
            label=f"best design by test (oracle, #{p['trial']})",
        )
    kind = VALIDATION if s.get("kind") == HOLDOUT else s.get("kind", VALIDATION)
    arrow = "higher is better" if d.direction == "maximize" else "lower is better"
    ax.set_xlabel(f"{label(kind, s.get('folds'))} {d.metric} ({arrow})", fontsize=9)
    ax.set_ylabel(f"test {d.metric}", fontsize=9)
    ax.set_title(f"selection versus test: {rho_text(s)}", fontsize=10)
    ax.margins(0.08)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _png(fig)


def section_selection(d: ReportData) -> Section:
    sec = Section(SECTION_ID, SECTION_TITLE)
    s = d.selection
    if not s or not (s.get("compare") or s.get("points")):
        return sec.note("No trial completed.")
    what = ("stage-2 fusion designs" if d.staged else "designs") + f" ranked by {s['label']}"
    sec.add(
        P(
            f"Every figure is labelled: a selection estimate (cross-validation: the mean over the "
            f"folds of the held-out fold's {d.metric}), validation (the single validation split), "
            "in-sample (validation that also chose the ensemble, so it flatters it) or test. The "
            f"search chose by the selection figures ({what}); the test split chose nothing, its "
            "scores only check the choice."
        ),
        compare_table(d),
    )
    if s.get("kind") != HOLDOUT:
        sec.note("± is the standard deviation of the metric over the folds.")
    oracle = s.get("oracle")
    w = next((c for c in s.get("compare", []) if c["role"] == "winner"), None)
    items = [("Spearman (selection, test)", rho_text(s))]
    if oracle:
        items.append(
            (
                "Best test of any design (oracle)",
                f"{fmt(oracle['test'])} (trial {oracle['trial']}); the winner's test "
                f"{fmt(w['test'] if w else None)}",
            )
        )
    sec.add(KV(items))
    return sec.figure(
        "selection_vs_test",
        fig_selection(d),
        f"Selection figure ({s['label']}) against test {d.metric}, one dot per completed "
        f"{'stage-2 ' if d.staged else ''}design: {rho_text(s)}. A rho near 1 means selection "
        "ranked the designs as the test split does; near 0, the choice was noise. The test split "
        "chose nothing.",
        "No completed design has a test score.",
    )


__all__ = ["SECTION_ID", "SECTION_TITLE", "compare_table", "fig_selection", "section_selection"]
