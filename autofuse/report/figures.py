"""The report's figures: one function per figure, :class:`ReportData` in, PNG bytes out.

Each ``fig_*`` returns ``None`` when there is nothing to draw (the section then says why). The
figures are drawn on matplotlib's Agg canvas directly (no pyplot, no global backend switch), so
rendering is thread-safe and needs no display.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch
from matplotlib.ticker import MaxNLocator, NullFormatter

from autofuse._util import better
from autofuse.report.blocks import POINT_FEEDS, fmt
from autofuse.report.collect import ReportData, Row
from autofuse.report.labels import CV, IN_SAMPLE, best_kind, short, study_label
from autofuse.report.staged import end_to_end

# colours (Okabe-Ito, readable for colour-blind readers)
C_MAIN, C_BASE, C_BEST, C_PRUNED, C_FAIL = "#0072B2", "#E69F00", "#D55E00", "#999999", "#CC79A7"


# ---- helpers ---------------------------------------------------------------------------------


def _figure(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _axes(w: float, h: float) -> tuple[Figure, Axes]:
    """A figure of ``w`` x ``h`` inches with one axes."""
    fig = _figure(w, h)
    return fig, fig.add_subplot()


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def _metric_label(d: ReportData, split: str = "validation") -> str:
    arrow = "higher is better" if d.direction == "maximize" else "lower is better"
    return f"{split} {d.metric} ({arrow})"


def _searched_split(d: ReportData) -> str:
    """What the searched designs' values are (the x axis of the group plots)."""
    rows = [r for r in d.trials if r.stage in (None, "fusion")] if d.staged else d.trials
    return study_label(rows)


def _wrap(text: str, width: int, lines: int = 6) -> str:
    return "\n".join(textwrap.wrap(text, width)[:lines])


def _num(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _short_param(p: str) -> str:
    return p if len(p) <= 40 else "..." + p[-37:]


def _barh(ax: Axes, labels: Sequence[str], values: Sequence[float], fontsize: float) -> None:
    """Horizontal bars, one per (shortened) label, bottom to top."""
    ax.barh(range(len(values)), values, color=C_MAIN)
    ax.set_yticks(range(len(labels)), [_short_param(x) for x in labels], fontsize=fontsize)


# ---- figures ---------------------------------------------------------------------------------


def fig_architecture(d: ReportData) -> bytes | None:
    """Modalities -> encoders -> fusion (at its point) -> head -> prediction."""
    if not d.best or not d.best.get("spec"):
        return None
    spec = d.best["spec"]
    encs = spec.get("encoders", {})
    mods = list(encs)
    n = max(len(mods), 1)
    fig, ax = _axes(11, max(2.8, 1.1 * n + 1.0))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    mtypes = d.dataset.get("modalities", {})

    def box(x: float, y: float, w: float, h: float, text: str, color: str, fs: int = 9) -> None:
        ax.add_patch(
            FancyBboxPatch(
                (x - w / 2, y - h / 2),
                w,
                h,
                boxstyle="round,pad=0.008",
                fc=color,
                ec="#333333",
                lw=1.0,
            )
        )
        ax.text(x, y, text, ha="center", va="center", fontsize=fs, wrap=True)

    def arrow(x0: float, y0: float, x1: float, y1: float, label: str | None = None) -> None:
        ax.annotate(
            "",
            xy=(x1, y1),
            xytext=(x0, y0),
            arrowprops={"arrowstyle": "-|>", "color": "#333333", "lw": 1.0},
        )
        if label:
            ax.text(
                (x0 + x1) / 2,
                (y0 + y1) / 2 + 0.03,
                label,
                ha="center",
                va="bottom",
                fontsize=7,
                color="#555555",
            )

    ys = [1 - (i + 0.5) / n for i in range(n)]
    bh = min(0.7 / n, 0.22)
    fusion = spec.get("fusion", {})
    point = fusion.get("point", "?")
    fy = 0.5
    for m, y in zip(mods, ys, strict=True):
        e = encs[m]
        box(0.08, y, 0.13, bh, f"{m}\n({mtypes.get(m, '?')})", "#E8F1FA")
        params = _wrap(
            ", ".join(
                f"{k}={_num(v)}"
                for k, v in sorted({"dim": e.get("dim"), **e.get("params", {})}.items())
                if v is not None and not isinstance(v, (dict, list))
            ),
            34,
            lines=2,
        )
        box(
            0.32,
            y,
            0.2,
            bh,
            f"{e.get('name')}\n{e.get('mode')}" + (f"\n{params}" if params else ""),
            "#FFF4DC",
            fs=8,
        )
        arrow(0.145, y, 0.22, y)
        arrow(
            0.42,
            y,
            0.565,
            fy + (y - fy) * 0.35,
            POINT_FEEDS.get(point, point) if y == ys[0] else None,
        )
    fp = ", ".join(f"{k}={_num(v)}" for k, v in sorted(fusion.get("params", {}).items()))
    fh = min(0.9, max(0.4, bh * n * 0.8))
    box(
        0.64,
        fy,
        0.15,
        fh,
        f"{fusion.get('family')}\n.{fusion.get('method')}\n\nfusion point: {point}\n\n"
        + _wrap(fp, 26),
        "#E3F4EA",
        fs=8,
    )
    head = spec.get("head", {})
    classes = d.dataset.get("classes") or []
    n_out = len(classes) if d.dataset.get("task") != "regression" and classes else 1
    box(
        0.83,
        fy,
        0.11,
        0.26,
        f"head\nLinear({head.get('fused_dim', '?')} -> {n_out})\n"
        f"dropout {fmt(head.get('dropout'), 2)}",
        "#F3E5F5",
        fs=8,
    )
    arrow(0.715, fy, 0.775, fy)
    task = d.dataset.get("task", "")
    out = (
        f"{n_out} classes"
        if task == "classification"
        else ("labels" if task == "multilabel" else "value")
    )
    box(0.955, fy, 0.075, 0.16, f"{task}\n{out}", "#F5F5F5", fs=7)
    arrow(0.885, fy, 0.918, fy)
    return _png(fig)


def fig_group(d: ReportData, kind: str, title: str) -> bytes | None:
    """Box + strip plot of the completed trials' scores per group (best marked)."""
    groups = [g for g in d.groups.get(kind, []) if g["values"]]
    if not groups:
        return None
    fig, ax = _axes(8, 0.45 * len(groups) + 1.3)
    labels = [g["name"] for g in groups][::-1]
    vals = [g["values"] for g in groups][::-1]
    # a box of 1-2 points says nothing
    big = [i for i, v in enumerate(vals, start=1) if len(v) >= 3]
    if big:
        ax.boxplot(
            [vals[i - 1] for i in big],
            positions=big,
            vert=False,
            widths=0.55,
            showfliers=False,
            patch_artist=True,
            boxprops={"facecolor": "#E8F1FA", "edgecolor": "#555555"},
            medianprops={"color": C_MAIN},
        )
    rng = np.random.default_rng(0)
    for i, v in enumerate(vals, start=1):
        ax.scatter(v, i + rng.uniform(-0.15, 0.15, len(v)), s=16, color=C_MAIN, alpha=0.7, zorder=3)
    bests = [g["best"] for g in groups][::-1]
    ax.scatter(bests, range(1, len(bests) + 1), marker="*", s=110, color=C_BEST, zorder=4)
    ax.set_yticks(range(1, len(labels) + 1), labels, fontsize=8)
    ax.set_ylim(0.4, len(labels) + 0.6)
    ax.set_xlabel(_metric_label(d, _searched_split(d)))
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def _val_test_bars(
    d: ReportData,
    names: list[str],
    val: list[float],
    test: list[float],
    colors: list[str],
    val_label: str = "validation",
) -> bytes:
    """Selection / validation (solid) and test (hatched) bars, one pair per name, the first on
    top; ``val_label`` names the solid bars in the legend."""
    names, val, test, colors = names[::-1], val[::-1], test[::-1], colors[::-1]
    fig, ax = _axes(8, 0.55 * len(names) + 1.3)
    y = np.arange(len(names))
    ax.barh(y + 0.2, val, 0.38, color=colors, label=val_label)
    ax.barh(y - 0.2, test, 0.38, color=colors, alpha=0.5, hatch="//", label="test")
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlabel(d.metric)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    lo = np.nanmin(val + test)
    hi = np.nanmax(val + test)
    ax.set_xlim(
        max(0.0, lo - 0.1 * (hi - lo + 1e-9)) if lo >= 0 else lo, hi + 0.05 * (abs(hi) + 1e-9)
    )
    return _png(fig)


def _best_name(d: ReportData) -> str:
    b = d.best or {}
    kind, k = best_kind(b)
    tag = f", {short(kind, k)}" if kind in (CV, IN_SAMPLE) else ""
    if b.get("kind") == "ensemble":
        return "best: ensemble (" + "+".join(f"#{n}" for n in b["trials"]) + f"{tag})"
    return f"best: {b.get('fusion')} (#{b.get('trial')}{tag})"


def fig_baselines(d: ReportData) -> bytes | None:
    """Validation and test metric of each completed baseline and of the best design."""
    rows = [b for b in d.baselines if b["val"] is not None]
    if not rows or not d.best:
        return None
    best = d.best
    return _val_test_bars(
        d,
        [_best_name(d)] + [f"{b['baseline']} (#{b['trial']})" for b in rows][::-1],
        [best["value"]] + [b["val"] for b in rows][::-1],
        [best["test_metrics"].get(d.metric, np.nan)]
        + [b["test"] if b["test"] is not None else np.nan for b in rows][::-1],
        [C_BEST] + [C_BASE] * len(rows),
        val_label="selection / validation (see names)" if _mixed_baselines(d) else "validation",
    )


def _mixed_baselines(d: ReportData) -> bool:
    """Whether the baselines' figures or the best design's are not plain validation."""
    kinds = {best_kind(d.best)[0]}
    kinds |= {_kind(d, b["trial"]) for b in d.baselines if b["val"] is not None}
    return kinds != {"validation"}


def _kind(d: ReportData, trial: int) -> str:
    r = d.trial(trial)
    return CV if r.selection is not None and r.selection["kind"] == CV else "validation"


def fig_stage_models(d: ReportData) -> bytes | None:
    """A staged study: each modality's best unimodal model, the best fusion-search design, the
    best single finalist and the winner, validation and test metric."""
    s = d.stages
    if not s:
        return None
    names, val, test, colors = [], [], [], []

    def add(name: str, v: float | None, t: float | None, color: str) -> None:
        if v is not None:
            names.append(name)
            val.append(v)
            test.append(np.nan if t is None else t)
            colors.append(color)

    w = s.get("winner")
    if w:
        add(
            f"winner: {w['kind']} ("
            + "+".join(f"#{n}" for n in w["trials"])
            + (f", {short(*best_kind(d.best))}" if best_kind(d.best)[0] != "validation" else "")
            + ")",
            w["val"],
            w["test"],
            C_BEST,
        )
        bs = w.get("best_single")
        if bs and w["kind"] == "ensemble":
            add(f"best single finalist (#{bs['trial']})", bs["val"], bs["test"], "#009E73")
    bf = s.get("best_fusion")
    if bf:
        fk = _kind(d, bf["trial"])
        tag = f", {short(fk, d.trial(bf['trial']).selection['folds'])}" if fk == CV else ""
        add(f"best fusion design, stage 2 (#{bf['trial']}{tag})", bf["val"], bf["test"], C_MAIN)
    for u in s.get("unimodal", []):
        add(f"{u['modality']} alone (#{u['trial']})", u["val"], u["test"], C_BASE)
    if not names:
        return None
    return _val_test_bars(d, names, val, test, colors, val_label="selection / validation")


def fig_seeds(d: ReportData) -> bytes | None:
    """A staged study: every finalist design's seeds (dots), their mean +/- std (bar), the
    stage-2 value of the design (hollow diamond); the winning design starred."""
    groups = [g for g in (d.stages or {}).get("seeds", []) if g["values"]]
    if not groups:
        return None
    fig, ax = _axes(8, 0.6 * len(groups) + 1.4)
    rng = np.random.default_rng(0)
    labels = []
    for i, g in enumerate(groups[::-1], start=1):
        v = g["values"]
        ax.errorbar(
            g["mean"], i, xerr=g["std"], fmt="|", color="#333333", ms=14, capsize=4, zorder=2
        )
        ax.scatter(v, i + rng.uniform(-0.12, 0.12, len(v)), s=26, color=C_MAIN, alpha=0.8, zorder=3)
        if g.get("design_val") is not None:
            ax.scatter(
                [g["design_val"]],
                [i + 0.3],
                marker="D",
                s=30,
                facecolor="none",
                edgecolor=C_BASE,
                zorder=3,
            )
        if g["chosen"]:
            ax.scatter([g["mean"]], [i - 0.3], marker="*", s=110, color=C_BEST, zorder=4)
        labels.append(f"design #{g['design']}\n{g['fusion']}@{g['point']}")
    ax.set_yticks(range(1, len(labels) + 1), labels, fontsize=8)
    ax.set_ylim(0.4, len(labels) + 0.6)
    ax.set_xlabel(_metric_label(d))
    ax.set_title(
        "seeds (dots), mean +/- std (bar), stage-2 value (diamond), winning design (star)",
        fontsize=9,
    )
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def fig_history(d: ReportData) -> bytes | None:
    """Objective value per trial, best so far, pruned trials at their last reported value."""
    pts = [r for r in d.trials if r.last_value is not None]
    if not pts:
        return None
    fig, ax = _axes(8, 3.6)
    done = [r for r in pts if r.status == "COMPLETE"]
    kinds: list[tuple[list[Row], str, dict[str, Any]]] = [
        ([r for r in done if not r.baseline], "value", {"color": C_MAIN, "s": 22}),
        ([r for r in done if r.baseline], "value", {"color": C_BASE, "marker": "s", "s": 26}),
        (
            [r for r in pts if r.status == "PRUNED"],
            "last_value",
            {"color": C_PRUNED, "marker": "x", "s": 22, "zorder": 2},
        ),
    ]
    for (rows, attr, style), label in zip(
        kinds, ("searched", "baseline", "pruned (last report)"), strict=True
    ):
        if rows:
            ax.scatter(
                [r.number for r in rows],
                [getattr(r, attr) for r in rows],
                label=label,
                **{"zorder": 3, **style},
            )
    xs, ys, best = [], [], None
    for r in sorted(done, key=lambda r: r.number):
        if best is None or better(r.value, best, d.direction):
            best = r.value
        xs.append(r.number)
        ys.append(best)
    if xs:
        ax.step(
            xs + [max(r.number for r in pts)],
            ys + ys[-1:],
            where="post",
            color=C_BEST,
            lw=1.5,
            label="best so far",
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(_metric_label(d, _wrap(study_label(d.trials), 34, lines=2)), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _png(fig)


def fig_importances(d: ReportData) -> bytes | None:
    """fANOVA importance per parameter, largest on top."""
    if not d.importances:
        return None
    items = sorted(d.importances.items(), key=lambda kv: kv[1])
    fig, ax = _axes(8, 0.38 * len(items) + 1.2)
    _barh(ax, [k for k, _ in items], [v for _, v in items], fontsize=8)
    ax.set_xlabel("importance (fANOVA, share of the variance of the objective)")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def fig_pareto(d: ReportData) -> bytes | None:
    """Metric against parameters and against latency, the Pareto front of each joined."""
    board = [d.trial(n) for n in d.leaderboard]
    if d.staged:
        board = end_to_end(board)
    if not board:
        return None
    fig = _figure(10, 3.8)
    axes = fig.subplots(1, 2)
    for ax, cost, label in (
        (axes[0], "n_params", "parameters"),
        (axes[1], "latency_ms", "latency (ms per sample)"),
    ):
        pts = [r for r in board if r.__dict__.get(cost) is not None]
        if not pts:
            ax.text(
                0.5, 0.5, f"no {label} recorded", ha="center", va="center", transform=ax.transAxes
            )
            ax.axis("off")
            continue
        ax.scatter(
            [getattr(r, cost) for r in pts],
            [r.value for r in pts],
            color=[C_BASE if r.baseline else C_MAIN for r in pts],
            s=22,
            zorder=3,
        )
        front = [d.trial(n) for n in d.pareto.get(cost, [])]
        if front:
            ax.plot(
                [getattr(r, cost) for r in front],
                [r.value for r in front],
                color=C_BEST,
                lw=1.3,
                marker="o",
                mfc="none",
                ms=9,
                label="Pareto front",
                zorder=2,
            )
            for r in front:
                ax.annotate(
                    f"#{r.number}",
                    (getattr(r, cost), r.value),
                    fontsize=7,
                    xytext=(4, 4),
                    textcoords="offset points",
                )
        xs = [getattr(r, cost) for r in pts]
        if cost == "n_params" and min(xs) > 0 and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.margins(0.1)
        ax.set_xlabel(label)
        ax.set_ylabel(_metric_label(d, study_label(pts) if not d.staged else "validation"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    return _png(fig)


def fig_robustness(d: ReportData) -> bytes | None:
    """Relative robustness of each finalist per perturbation (1 = unchanged)."""
    rb = d.robustness
    if not rb or not rb["finalists"]:
        return None
    conds = [(c["modality"], c["how"]) for c in rb["finalists"][0]["conditions"]]
    labels = [f"{m}\n{'removed' if h == 'remove' else 'noise'}" for m, h in conds]
    fins = list(rb["finalists"])
    if rb.get("ensemble"):
        e = rb["ensemble"]
        fins.append({**e, "trial": "+".join(str(n) for n in e["trials"]), "fusion": "ensemble"})
    fig, ax = _axes(max(7, 1.0 * len(conds) + 2), 3.8)
    x = np.arange(len(conds))
    w = 0.8 / len(fins)
    colors = [C_MAIN, C_BASE, "#009E73", C_FAIL, "#56B4E9"]
    for i, f in enumerate(fins):
        vals = [c["relative"] for c in f["conditions"]]
        ax.bar(
            x + (i - (len(fins) - 1) / 2) * w,
            vals,
            w,
            color=colors[i % len(colors)],
            label=f"#{f['trial']} {f['fusion']}" + (f"@{f['point']}" if f.get("point") else ""),
        )
    ax.axhline(1.0, color="#333333", lw=0.8, ls="--")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel(f"relative robustness\n({d.metric} ablated vs clean)")
    ax.grid(axis="y", alpha=0.3)
    fig.legend(fontsize=8, loc="outside upper center", ncol=min(3, len(fins)), frameon=False)
    return _png(fig)


def fig_cost(d: ReportData) -> bytes | None:
    """Wall time per trial (coloured by outcome) and each worker's utilisation."""
    rows = [r for r in d.trials if r.duration_s is not None]
    if not rows:
        return None
    fig = _figure(10, 3.6)
    ax, ax2 = fig.subplots(1, 2, width_ratios=[2.2, 1])
    color = {"COMPLETE": C_MAIN, "PRUNED": C_PRUNED, "FAIL": C_FAIL}
    ax.bar(
        [r.number for r in rows],
        [r.duration_s for r in rows],
        color=[
            C_BASE if r.baseline and r.status == "COMPLETE" else color.get(r.status, "#000000")
            for r in rows
        ],
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("wall time (s)")
    ax.set_title("time per trial (blue searched, orange baseline, grey pruned)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ws = d.cost.get("workers", [])
    if ws:
        _barh(ax2, [w["worker"] for w in ws], [100 * (w["utilisation"] or 0) for w in ws], 7)
        ax2.set_xlim(0, 105)
        ax2.set_xlabel("busy time / active study time (%)")
        ax2.set_title("worker utilisation", fontsize=9)
    else:
        ax2.axis("off")
    return _png(fig)


__all__ = [
    "fig_architecture",
    "fig_baselines",
    "fig_cost",
    "fig_group",
    "fig_history",
    "fig_importances",
    "fig_pareto",
    "fig_robustness",
    "fig_seeds",
    "fig_stage_models",
]
