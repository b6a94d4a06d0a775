"""Render a :class:`~autofuse.report.collect.ReportData` as HTML and Markdown, with PNG figures.

The report is first laid out as a list of sections made of a few block types (paragraph, key /
value list, table, figure, preformatted text); the HTML and the Markdown are two printers of that
one layout, so both say the same thing with the same numbers. ``report.html`` is one
self-contained file (CSS, the small table-sorting script and every figure inlined as a PNG data
URI): it opens offline. ``report.md`` links the same PNGs under ``figures/``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autofuse.report.collect import ReportData

#: section ids in report order (``<section id=...>`` in the HTML, anchors in the Markdown)
SECTIONS = {
    "summary": "1. Summary",
    "best": "2. Best architecture",
    "leaderboard": "3. Leaderboard",
    "comparison": "4. Family and fusion-point comparison",
    "baselines": "5. Search versus baselines",
    "dynamics": "6. Search dynamics",
    "robustness": "7. Robustness of the finalists",
    "cost": "8. Cost",
}

POINT_FEEDS = {
    "early": "stem features",
    "mid": "mid-stage features",
    "late": "pooled features",
    "hybrid": "features of every stage",
}

# colours (Okabe-Ito, readable for colour-blind readers)
C_MAIN, C_BASE, C_BEST, C_PRUNED, C_FAIL = "#0072B2", "#E69F00", "#D55E00", "#999999", "#CC79A7"


# ---- formatting ------------------------------------------------------------------------------


def fmt(x: Any, nd: int = 4) -> str:
    """A metric with ``nd`` decimals; ``-`` for missing or non-finite values."""
    if isinstance(x, bool) or x is None:
        return "-" if x is None else str(x)
    if isinstance(x, (int, float)):
        return f"{x:.{nd}f}" if math.isfinite(x) else "-"
    return str(x)


def fmt_signed(x: float | None, nd: int = 4) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:+.{nd}f}"


def fmt_int(x: Any) -> str:
    return f"{int(x):,}" if isinstance(x, (int, float)) and math.isfinite(x) else "-"


def fmt_s(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    if x >= 120:
        return f"{x / 60:.1f} min"
    return f"{x:.1f} s"


def fmt_pct(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.0f}%"


def enc_str(encoders: dict[str, str]) -> str:
    return ", ".join(f"{m}={e}" for m, e in encoders.items())


# ---- layout blocks ---------------------------------------------------------------------------


@dataclass
class P:
    text: str
    muted: bool = False


@dataclass
class KV:
    items: list[tuple[str, str]]


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    name: str = ""
    numeric: set[int] = field(default_factory=set)  # right-aligned columns
    highlight: set[int] = field(default_factory=set)  # row indices to emphasise


@dataclass
class Fig:
    name: str
    png: bytes
    caption: str


@dataclass
class Pre:
    text: str


@dataclass
class H3:
    text: str


@dataclass
class Section:
    id: str
    title: str
    blocks: list = field(default_factory=list)


# ---- figures ---------------------------------------------------------------------------------


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def _metric_label(d: ReportData, split: str = "validation") -> str:
    arrow = "higher is better" if d.direction == "maximize" else "lower is better"
    return f"{split} {d.metric} ({arrow})"


def fig_architecture(d: ReportData) -> bytes | None:
    """Modalities -> encoders -> fusion (at its point) -> head -> prediction."""
    from matplotlib.patches import FancyBboxPatch

    if not d.best or not d.best.get("spec"):
        return None
    spec = d.best["spec"]
    encs = spec.get("encoders", {})
    mods = list(encs)
    n = max(len(mods), 1)
    fig = _figure(11, max(2.8, 1.1 * n + 1.0))
    ax = fig.add_subplot()
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    mtypes = d.dataset.get("modalities", {})

    def box(x, y, w, h, text, color, fs=9):
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

    def arrow(x0, y0, x1, y1, label=None):
        ax.annotate(
            "",
            xy=(x1, y0 if y1 is None else y1),
            xytext=(x0, y0),
            arrowprops={"arrowstyle": "-|>", "color": "#333333", "lw": 1.0},
        )
        if label:
            ax.text(
                (x0 + x1) / 2,
                (y0 + (y1 if y1 is not None else y0)) / 2 + 0.03,
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


def _wrap(text: str, width: int, lines: int = 6) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)[:lines])


def _num(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def fig_group(d: ReportData, kind: str, title: str) -> bytes | None:
    """Box + strip plot of the completed trials' scores per group (best marked)."""
    import numpy as np

    groups = [g for g in d.groups.get(kind, []) if g["values"]]
    if not groups:
        return None
    fig = _figure(8, 0.45 * len(groups) + 1.3)
    ax = fig.add_subplot()
    labels = [g["name"] for g in groups][::-1]
    vals = [g["values"] for g in groups][::-1]
    big = [
        i for i, v in enumerate(vals, start=1) if len(v) >= 3
    ]  # a box of 1-2 points says nothing
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
    ax.set_xlabel(_metric_label(d))
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def fig_baselines(d: ReportData) -> bytes | None:
    rows = [b for b in d.baselines if b["val"] is not None]
    if not rows or not d.best:
        return None
    import numpy as np

    names = [f"{b['baseline']} (#{b['trial']})" for b in rows]
    val = [b["val"] for b in rows]
    test = [b["test"] if b["test"] is not None else np.nan for b in rows]
    best = d.best
    names.append(f"best: {best['fusion']} (#{best['trial']})")
    val.append(best["value"])
    test.append(best["test_metrics"].get(d.metric, np.nan))
    fig = _figure(8, 0.55 * len(names) + 1.3)
    ax = fig.add_subplot()
    y = np.arange(len(names))
    ax.barh(y + 0.2, val, 0.38, color=[C_BASE] * len(rows) + [C_BEST], label="validation")
    ax.barh(
        y - 0.2,
        test,
        0.38,
        color=[C_BASE] * len(rows) + [C_BEST],
        alpha=0.5,
        hatch="//",
        label="test",
    )
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


def fig_history(d: ReportData) -> bytes | None:
    """Objective value per trial, best so far, pruned trials at their last reported value."""
    from matplotlib.ticker import MaxNLocator

    pts = [r for r in d.trials if r.last_value is not None]
    if not pts:
        return None
    fig = _figure(8, 3.6)
    ax = fig.add_subplot()
    done = [r for r in pts if r.status == "COMPLETE"]
    base = [r for r in done if r.baseline]
    found = [r for r in done if not r.baseline]
    pruned = [r for r in pts if r.status == "PRUNED"]
    if found:
        ax.scatter(
            [r.number for r in found],
            [r.value for r in found],
            color=C_MAIN,
            s=22,
            label="searched",
            zorder=3,
        )
    if base:
        ax.scatter(
            [r.number for r in base],
            [r.value for r in base],
            color=C_BASE,
            marker="s",
            s=26,
            label="baseline",
            zorder=3,
        )
    if pruned:
        ax.scatter(
            [r.number for r in pruned],
            [r.last_value for r in pruned],
            color=C_PRUNED,
            marker="x",
            s=22,
            label="pruned (last report)",
            zorder=2,
        )
    xs, ys, best = [], [], None
    for r in sorted(done, key=lambda r: r.number):
        if best is None or (r.value > best if d.direction == "maximize" else r.value < best):
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
    ax.set_ylabel(_metric_label(d))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _png(fig)


def fig_importances(d: ReportData) -> bytes | None:
    if not d.importances:
        return None
    items = sorted(d.importances.items(), key=lambda kv: kv[1])
    fig = _figure(8, 0.38 * len(items) + 1.2)
    ax = fig.add_subplot()
    ax.barh(range(len(items)), [v for _, v in items], color=C_MAIN)
    ax.set_yticks(range(len(items)), [_short_param(k) for k, _ in items], fontsize=8)
    ax.set_xlabel("importance (fANOVA, share of the variance of the objective)")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def _short_param(p: str) -> str:
    return p if len(p) <= 40 else "..." + p[-37:]


def fig_pareto(d: ReportData) -> bytes | None:
    board = [d.trial(n) for n in d.leaderboard]
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
            from matplotlib.ticker import NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.margins(0.1)
        ax.set_xlabel(label)
        ax.set_ylabel(_metric_label(d))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    return _png(fig)


def fig_robustness(d: ReportData) -> bytes | None:
    rb = d.robustness
    if not rb or not rb["finalists"]:
        return None
    import numpy as np

    conds = [(c["modality"], c["how"]) for c in rb["finalists"][0]["conditions"]]
    labels = [f"{m}\n{'removed' if h == 'remove' else 'noise'}" for m, h in conds]
    fins = rb["finalists"]
    fig = _figure(max(7, 1.0 * len(conds) + 2), 3.8)
    ax = fig.add_subplot()
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
            label=f"#{f['trial']} {f['fusion']}@{f['point']}",
        )
    ax.axhline(1.0, color="#333333", lw=0.8, ls="--")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel(f"relative robustness\n({d.metric} ablated vs clean)")
    ax.grid(axis="y", alpha=0.3)
    fig.legend(fontsize=8, loc="outside upper center", ncol=min(3, len(fins)), frameon=False)
    return _png(fig)


def fig_cost(d: ReportData) -> bytes | None:
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
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("wall time (s)")
    ax.set_title("time per trial (blue searched, orange baseline, grey pruned)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ws = d.cost.get("workers", [])
    if ws:
        ax2.barh(range(len(ws)), [100 * (w["utilisation"] or 0) for w in ws], color=C_MAIN)
        ax2.set_yticks(range(len(ws)), [_short_param(w["worker"]) for w in ws], fontsize=7)
        ax2.set_xlim(0, 105)
        ax2.set_xlabel("busy time / active study time (%)")
        ax2.set_title("worker utilisation", fontsize=9)
    else:
        ax2.axis("off")
    return _png(fig)


# ---- sections --------------------------------------------------------------------------------


def _add_fig(sec: Section, name: str, png: bytes | None, caption: str, missing: str) -> None:
    if png is None:
        sec.blocks.append(P(missing, muted=True))
    else:
        sec.blocks.append(Fig(name, png, caption))


def _dataset_lines(d: ReportData) -> list[tuple[str, str]]:
    info = d.dataset
    splits = info.get("splits", {})
    missing = info.get("missing_rate", {})
    mods = ", ".join(
        f"{m} ({t}{', %.0f%% missing' % (100 * missing[m]) if missing.get(m) else ''})"
        for m, t in info.get("modalities", {}).items()
    )
    task = info.get("task", "?")
    if info.get("classes"):
        task += f", {len(info['classes'])} classes"
    return [
        (
            "Dataset",
            f"{info.get('name', '?')} ({fmt_int(info.get('rows'))} samples)"
            + (f" at {d.dataset_path}" if d.dataset_path else ""),
        ),
        ("Samples per split", " / ".join(f"{k} {fmt_int(v)}" for k, v in splits.items()) or "-"),
        ("Modalities", mods or "-"),
        ("Task", task),
    ]


def _verdict(d: ReportData) -> str:
    if not d.best:
        return "No trial completed, so there is no recommendation yet."
    b = d.best
    test = b["test_metrics"].get(d.metric)
    text = (
        f"Use {b['fusion']} fused at the {b['point']} point (trial {b['trial']}): "
        f"validation {d.metric} {fmt(b['value'])}, test {d.metric} {fmt(test)}"
    )
    done = [x for x in d.baselines if x["val"] is not None and x["trial"] != b["trial"]]
    if b.get("baseline"):
        text += (
            f". It is the hand-designed baseline {b['baseline']}; the search found nothing better"
        )
    elif done:
        sign = 1 if d.direction == "maximize" else -1
        top = max(done, key=lambda x: sign * x["val"])
        text += (
            f", {fmt_signed(top['val_diff'])} validation / {fmt_signed(top['test_diff'])} test "
            f"{d.metric} against the best baseline ({top['baseline']})"
        )
    return text + "."


def section_summary(d: ReportData) -> Section:
    sec = Section("summary", SECTIONS["summary"])
    sec.blocks.append(P(_verdict(d)))
    c = d.counts
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(d.pruned_reasons.items()))
    trials = (
        f"{c['completed']} completed, {c['pruned']} pruned"
        + (f" ({reasons})" if reasons and set(d.pruned_reasons) != {"pruned"} else "")
        + f", {c['failed']} failed"
        + (f", {c['running']} running" if c.get("running") else "")
    )
    items = _dataset_lines(d) + [
        ("Objective", f"{d.metric} on the validation split ({d.direction})"),
        ("Search space", f"{d.space_name or '?'}; budget {d.budget_trials or '?'} trials"),
        (
            "Wall time",
            f"{fmt_s(d.wall_time_s)} (last search run); {fmt_s(d.span_s)} from the first "
            f"trial's start to the last trial's end",
        ),
        ("Trials", trials),
    ]
    if d.best:
        b = d.best
        items.append(
            (
                "Best architecture",
                f"trial {b['trial']}: {b['fusion']} at {b['point']} [{enc_str(b['encoders'])}]",
            )
        )
        items.append(
            ("Best test metrics", ", ".join(f"{k} {fmt(v)}" for k, v in b["test_metrics"].items()))
        )
    for f in d.failed[:5]:
        items.append(
            (
                f"Trial {f['trial']} failed",
                f"{f.get('reason') or ''} {f.get('error') or ''}".strip(),
            )
        )
    items.append(("History", f"read from the {d.source} tables; report generated {d.generated_at}"))
    sec.blocks.append(KV(items))
    return sec


def section_best(d: ReportData) -> Section:
    sec = Section("best", SECTIONS["best"])
    if not d.best:
        sec.blocks.append(P("No trial completed.", muted=True))
        return sec
    b, spec = d.best, d.best.get("spec") or {}
    f = spec.get("fusion", {})
    items = [
        (
            "Fusion",
            f"{f.get('family')}.{f.get('method')} (family {f.get('family')}, method {f.get('method')})",
        ),
        (
            "Fusion point",
            f"{f.get('point')}: reads the encoders' {POINT_FEEDS.get(f.get('point'), '?')}",
        ),
        ("Fusion hyperparameters", _params(f.get("params", {})) or "-"),
    ]
    for m, e in spec.get("encoders", {}).items():
        items.append(
            (
                f"Encoder {m}",
                f"{e.get('name')} ({e.get('mode')}), dim={e.get('dim')}"
                + (f", {_params(e['params'])}" if e.get("params") else ""),
            )
        )
    items += [
        ("Head", _params(spec.get("head", {}))),
        ("Training", _params(spec.get("training", {}))),
        ("Parameters", fmt_int(b.get("n_params"))),
        ("Latency", f"{fmt(b.get('latency_ms'), 3)} ms per sample"),
        ("Validation metrics", ", ".join(f"{k} {fmt(v)}" for k, v in b["val_metrics"].items())),
        ("Test metrics", ", ".join(f"{k} {fmt(v)}" for k, v in b["test_metrics"].items())),
    ]
    sec.blocks.append(KV(items))
    _add_fig(
        sec,
        "architecture",
        fig_architecture(d),
        "Modalities -> encoders -> fusion at its point -> head.",
        "No spec recorded for the best trial.",
    )
    sec.blocks.append(
        P(
            "The spec (rebuild with autofuse.build_model; the exported weights are in "
            f"trials/{d.study}/best/):",
            muted=True,
        )
    )
    sec.blocks.append(Pre(json.dumps(spec, indent=2)))
    return sec


def _params(p: dict) -> str:
    return ", ".join(f"{k}={fmt(v, 4) if isinstance(v, float) else v}" for k, v in p.items())


def leaderboard_table(d: ReportData, limit: int | None = None) -> Table:
    """Completed trials best first: fusion, point, encoders, validation and test metrics."""
    from autofuse.report.collect import LEADERBOARD_ROWS

    board = [d.trial(n) for n in d.leaderboard[: limit or LEADERBOARD_ROWS]]
    val_keys = _metric_keys([r.val_metrics for r in board], d.metric)
    test_keys = _metric_keys([r.test_metrics for r in board], d.metric)
    headers = (
        ["rank", "trial", "family", "method", "point", "encoders", "baseline"]
        + [f"val {k}" for k in val_keys]
        + [f"test {k}" for k in test_keys]
        + ["params", "latency ms"]
    )
    rows = []
    for i, r in enumerate(board, start=1):
        rows.append(
            [
                str(i),
                str(r.number),
                r.family or "-",
                r.method or "-",
                r.point or "-",
                enc_str(r.encoders),
                r.baseline or "",
            ]
            + [fmt(r.val_metrics.get(k)) for k in val_keys]
            + [fmt(r.test_metrics.get(k)) for k in test_keys]
            + [fmt_int(r.n_params), fmt(r.latency_ms, 3)]
        )
    numeric = {0, 1} | set(range(7, len(headers)))
    return Table(
        headers, rows, name="leaderboard", numeric=numeric, highlight={0} if rows else set()
    )


def _metric_keys(dicts: list[dict], metric: str) -> list[str]:
    keys = [metric] if any(metric in x for x in dicts) else []
    for x in dicts:
        keys += [k for k in x if k not in keys]
    return keys


def section_leaderboard(d: ReportData) -> Section:
    from autofuse.report.collect import LEADERBOARD_ROWS

    sec = Section("leaderboard", SECTIONS["leaderboard"])
    if not d.leaderboard:
        sec.blocks.append(P("No trial completed.", muted=True))
        return sec
    n = len(d.leaderboard)
    sec.blocks.append(
        P(
            f"Completed trials ranked by validation {d.metric}"
            + (f" (top {LEADERBOARD_ROWS} of {n})" if n > LEADERBOARD_ROWS else f" ({n})")
            + "; test metrics are for reference only (the search never sees them)."
        )
    )
    sec.blocks.append(leaderboard_table(d))
    return sec


def section_comparison(d: ReportData) -> Section:
    sec = Section("comparison", SECTIONS["comparison"])
    sec.blocks.append(
        P(
            f"Every completed trial's validation {d.metric}, grouped; the star marks the "
            "group's best. Pruned and failed trials are counted in the tables but have "
            "no final score."
        )
    )
    for kind, title in (
        ("family", "per fusion family"),
        ("method", "per fusion method"),
        ("point", "per fusion point"),
        ("encoder", "per encoder choice"),
    ):
        groups = d.groups.get(kind, [])
        sec.blocks.append(H3(title[0].upper() + title[1:]))
        if not groups:
            sec.blocks.append(P("No trials.", muted=True))
            continue
        _add_fig(
            sec,
            f"by_{kind}",
            fig_group(d, kind, f"validation {d.metric} {title}"),
            f"Validation {d.metric} {title}: one dot per completed trial, the star marks the best, "
            "boxes where a group has 3 or more trials.",
            "No completed trial.",
        )
        rows = [
            [
                g["name"],
                str(g["trials"]),
                str(g["completed"]),
                str(g["pruned"]),
                str(g["failed"]),
                fmt(g["best"]),
                fmt(g["median"]),
                fmt(g["mean"]),
                fmt(g["best_test"].get(d.metric)),
                str(g["best_trial"] if g["best_trial"] is not None else "-"),
            ]
            for g in groups
        ]
        sec.blocks.append(
            Table(
                [
                    kind,
                    "trials",
                    "completed",
                    "pruned",
                    "failed",
                    f"best val {d.metric}",
                    "median",
                    "mean",
                    f"test {d.metric} of best",
                    "best trial",
                ],
                rows,
                name=f"by_{kind}",
                numeric=set(range(1, 10)),
                highlight={0} if groups and groups[0]["best"] is not None else set(),
            )
        )
    return sec


def section_baselines(d: ReportData) -> Section:
    sec = Section("baselines", SECTIONS["baselines"])
    if not d.baselines:
        sec.blocks.append(P("No hand-designed baselines were enqueued in this study.", muted=True))
        return sec
    if not d.best:
        sec.blocks.append(P("No trial completed.", muted=True))
        return sec
    b = d.best
    sec.blocks.append(
        P(
            f"The hand-designed baselines (enqueued first, same encoders as the space's "
            f"first choice) against the best design found, trial {b['trial']} "
            f"({b['fusion']} at {b['point']}). Difference = best - baseline"
            + (
                " (positive: the search wins)."
                if d.direction == "maximize"
                else " (negative: the search wins)."
            )
        )
    )
    rows = []
    for x in d.baselines:
        rows.append(
            [
                x["baseline"],
                str(x["trial"]),
                f"{x['fusion']}@{x['point']}",
                _status(x["status"], x["reason"]),
                fmt(x["val"]),
                fmt(x["test"]),
                fmt_signed(x["val_diff"]),
                fmt_signed(x["test_diff"]),
                fmt_int(x["n_params"]),
            ]
        )
    rows.append(
        [
            "best found",
            str(b["trial"]),
            f"{b['fusion']}@{b['point']}",
            "complete",
            fmt(b["value"]),
            fmt(b["test_metrics"].get(d.metric)),
            "",
            "",
            fmt_int(b["n_params"]),
        ]
    )
    sec.blocks.append(
        Table(
            [
                "design",
                "trial",
                "fusion",
                "status",
                f"val {d.metric}",
                f"test {d.metric}",
                "val difference",
                "test difference",
                "params",
            ],
            rows,
            name="baselines",
            numeric={1, 4, 5, 6, 7, 8},
            highlight={len(rows) - 1},
        )
    )
    _add_fig(
        sec,
        "baselines",
        fig_baselines(d),
        f"Validation (solid) and test (hatched) {d.metric}.",
        "No baseline completed.",
    )
    return sec


def section_dynamics(d: ReportData) -> Section:
    sec = Section("dynamics", SECTIONS["dynamics"])
    sec.blocks.append(H3("Optimisation history"))
    _add_fig(
        sec,
        "history",
        fig_history(d),
        "Objective per trial and the best so far.",
        "No trial reported a value.",
    )
    sec.blocks.append(H3("Parameter importances"))
    if d.importances:
        sec.blocks.append(
            P(
                "fANOVA importances (Optuna) over the choices every completed trial made: "
                "fusion method, fusion point, encoders and the shared hyperparameters."
            )
        )
        _add_fig(sec, "importances", fig_importances(d), "Parameter importances.", "")
        sec.blocks.append(
            Table(
                ["parameter", "importance"],
                [[k, fmt(v, 3)] for k, v in d.importances.items()],
                name="importances",
                numeric={1},
            )
        )
    else:
        sec.blocks.append(
            P(f"Parameter importances are not available: {d.importances_note}.", muted=True)
        )
    sec.blocks.append(H3("Pareto front"))
    sec.blocks.append(
        P(
            f"Completed trials by validation {d.metric} against their size and their "
            "latency; the line joins the designs no other design beats on both."
        )
    )
    _add_fig(
        sec,
        "pareto",
        fig_pareto(d),
        "Metric versus parameters (left) and latency (right).",
        "No trial completed.",
    )
    front = d.pareto.get("n_params", [])
    if front:
        rows = [
            [
                str(n),
                d.trial(n).fusion,
                d.trial(n).point or "-",
                fmt(d.trial(n).value),
                fmt_int(d.trial(n).n_params),
                fmt(d.trial(n).latency_ms, 3),
                "yes" if n in d.pareto.get("latency_ms", []) else "",
            ]
            for n in front
        ]
        sec.blocks.append(
            Table(
                [
                    "trial",
                    "fusion",
                    "point",
                    f"val {d.metric}",
                    "params",
                    "latency ms",
                    "also on latency front",
                ],
                rows,
                name="pareto",
                numeric={0, 3, 4, 5},
            )
        )
    return sec


def section_robustness(d: ReportData) -> Section:
    sec = Section("robustness", SECTIONS["robustness"])
    rb = d.robustness
    if not rb:
        sec.blocks.append(P(f"Not evaluated: {d.robustness_note}.", muted=True))
        return sec
    worse = "below 1 = worse"
    sec.blocks.append(
        P(
            f"The top {len(rb['finalists'])} designs, rebuilt from their checkpoints and evaluated on the "
            f"test split ({rb['device']}) with each modality removed (every sample marked absent) and "
            f"with Gaussian noise of {rb['sigma']} times the input's standard deviation added to it. "
            f"Relative robustness (MultiBench) = {d.metric} under the perturbation / clean {d.metric} "
            + ("" if d.direction == "maximize" else "(inverted, as lower is better) ")
            + f"({worse}). Noise leaves token ids and category codes unchanged, so it only "
            "perturbs continuous inputs (pixels, audio, numbers, time series, frozen features)."
        )
    )
    fins = rb["finalists"]
    rows = [
        [
            str(f["trial"]),
            f["fusion"],
            f["point"] or "-",
            fmt(f["clean"].get(d.metric)),
            fmt(f["recorded_test"].get(d.metric)),
            fmt(f["mean_relative"], 3),
            fmt(f["worst_relative"], 3),
        ]
        for f in fins
    ]
    sec.blocks.append(
        Table(
            [
                "trial",
                "fusion",
                "point",
                f"clean test {d.metric}",
                f"recorded test {d.metric}",
                "mean relative",
                "worst relative",
            ],
            rows,
            name="finalists",
            numeric={0, 3, 4, 5, 6},
        )
    )
    conds = [(c["modality"], c["how"]) for c in fins[0]["conditions"]]
    crow = [["clean"] + [fmt(f["clean"].get(d.metric)) for f in fins]]
    for i, (m, how) in enumerate(conds):
        label = f"{m} removed" if how == "remove" else f"{m} + noise (sigma {rb['sigma']})"
        crow.append(
            [label]
            + [
                f"{fmt(f['conditions'][i]['metrics'].get(d.metric))} "
                f"({fmt(f['conditions'][i]['relative'], 3)})"
                for f in fins
            ]
        )
    sec.blocks.append(
        Table(
            ["condition"] + [f"#{f['trial']} {d.metric} (relative)" for f in fins],
            crow,
            name="robustness",
            numeric=set(range(1, len(fins) + 1)),
        )
    )
    _add_fig(
        sec,
        "robustness",
        fig_robustness(d),
        "Relative robustness per perturbation (1 = unchanged).",
        "",
    )
    return sec


def section_cost(d: ReportData) -> Section:
    sec = Section("cost", SECTIONS["cost"])
    c = d.cost
    cache = (
        "not recorded"
        if c.get("cache_hits") is None
        else f"{c['cache_hits']} hits, {c.get('cache_misses') or 0} misses"
    )
    sec.blocks.append(
        KV(
            [
                (
                    "Trial time",
                    f"{fmt_s(c.get('total_trial_s'))} in all; mean {fmt_s(c.get('mean_trial_s'))}, "
                    f"median {fmt_s(c.get('median_trial_s'))} per trial",
                ),
                (
                    "Active study time",
                    f"{fmt_s(c.get('active_s'))} (time at least one trial was running)",
                ),
                ("Feature cache", cache),
                ("Workers", str(len(c.get("workers", [])))),
            ]
        )
    )
    _add_fig(
        sec, "cost", fig_cost(d), "Time per trial and worker utilisation.", "No timings recorded."
    )
    rows = [
        [
            w["worker"],
            str(w.get("device") or "-"),
            str(w["trials"]),
            str(w["completed"]),
            fmt_s(w["busy_s"]),
            fmt_s(w["train_s"]),
            fmt_pct(w["utilisation"]),
        ]
        for w in c.get("workers", [])
    ]
    if rows:
        sec.blocks.append(
            Table(
                ["worker", "device", "trials", "completed", "busy", "training", "utilisation"],
                rows,
                name="workers",
                numeric={2, 3, 4, 5, 6},
            )
        )
    trows = [
        [
            str(r.number),
            _status(r.status, r.reason),
            f"{r.fusion}@{r.point}" if r.family else "-",
            fmt_s(r.duration_s),
            fmt_s(r.train_time_s),
            str(r.epochs_run if r.epochs_run is not None else "-"),
            "-"
            if r.cache_hits is None
            else f"{r.cache_hits}/{(r.cache_hits or 0) + (r.cache_misses or 0)}",
            r.worker or "-",
        ]
        for r in d.trials
    ]
    sec.blocks.append(
        Table(
            [
                "trial",
                "status",
                "fusion",
                "wall time",
                "training",
                "epochs",
                "cache hits",
                "worker",
            ],
            trows,
            name="trials",
            numeric={0, 3, 4, 5},
        )
    )
    return sec


def _status(status: str, reason: str | None) -> str:
    s = status.lower()
    return f"{s} ({reason})" if reason and reason != s and status != "COMPLETE" else s


def build_sections(d: ReportData) -> list[Section]:
    return [
        section_summary(d),
        section_best(d),
        section_leaderboard(d),
        section_comparison(d),
        section_baselines(d),
        section_dynamics(d),
        section_robustness(d),
        section_cost(d),
    ]


# ---- printers --------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:0;background:#fafafa}
header{background:#0b3d62;color:#fff;padding:18px 32px}
header h1{margin:0 0 4px;font-size:22px}
header p{margin:0;opacity:.85}
nav{background:#fff;border-bottom:1px solid #ddd;padding:8px 32px;position:sticky;top:0;z-index:1}
nav a{margin-right:14px;color:#0b5f99;text-decoration:none;font-size:13px}
main{max-width:1280px;margin:0 auto;padding:8px 32px 40px}
section{background:#fff;border:1px solid #e2e2e2;border-radius:6px;padding:6px 20px 16px;margin:18px 0}
h2{font-size:18px;border-bottom:1px solid #eee;padding-bottom:6px}
h3{font-size:15px;margin:18px 0 6px}
.muted{color:#777}
.verdict{font-size:15px;background:#eef6ee;border-left:4px solid #2e7d32;padding:8px 12px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:10px 0}
dt{font-weight:600;color:#444}
dd{margin:0}
table{border-collapse:collapse;margin:10px 0;font-size:12.5px;width:100%}
th,td{border:1px solid #ddd;padding:4px 7px;text-align:left;vertical-align:top}
th{background:#f0f3f6;cursor:pointer}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tr.hl td{background:#fff6e0;font-weight:600}
.scroll{overflow-x:auto}
figure{margin:12px 0}
figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#666;font-size:12px}
pre{background:#f6f8fa;border:1px solid #e5e5e5;padding:10px;font-size:12px;max-height:320px;overflow:auto}
footer{color:#888;font-size:12px;text-align:center;padding:16px}
"""

# click a column header to sort the table by it (numbers numerically)
_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.title = "sort";
    th.addEventListener("click", function () {
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var asc = th.getAttribute("data-dir") !== "asc";
      th.setAttribute("data-dir", asc ? "asc" : "desc");
      var key = function (r) {
        var t = r.cells[col].textContent.replace(/,/g, "");
        var n = parseFloat(t);
        return isNaN(n) ? t : n;
      };
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (typeof x !== typeof y) { x = String(x); y = String(y); }
        return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def to_html(d: ReportData, sections: list[Section]) -> str:
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>autofuse report: {_e(d.study)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<header><h1>autofuse report: study {_e(d.study)}</h1>",
        f"<p>dataset {_e(d.dataset.get('name', '?'))} · objective {_e(d.metric)} ({_e(d.direction)}) · "
        f"generated {_e(d.generated_at)}</p></header>",
        "<nav>"
        + "".join(f'<a href="#{s.id}">{_e(s.title)}</a>' for s in sections)
        + "</nav><main>",
    ]
    for s in sections:
        out.append(f'<section id="{s.id}"><h2>{_e(s.title)}</h2>')
        for i, b in enumerate(s.blocks):
            out.append(_html_block(b, verdict=(s.id == "summary" and i == 0)))
        out.append("</section>")
    out.append(
        f"</main><footer>autofuse · history from the {_e(d.source)} tables · "
        f"figures and script inlined; this file needs no network</footer>"
    )
    out.append(f"<script>{_JS}</script></body></html>")
    return "\n".join(out)


def _html_block(b, verdict: bool = False) -> str:
    if isinstance(b, P):
        cls = "verdict" if verdict else ("muted" if b.muted else "")
        return f'<p class="{cls}">{_e(b.text)}</p>' if cls else f"<p>{_e(b.text)}</p>"
    if isinstance(b, H3):
        return f"<h3>{_e(b.text)}</h3>"
    if isinstance(b, KV):
        return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in b.items) + "</dl>"
    if isinstance(b, Pre):
        return f"<pre>{_e(b.text)}</pre>"
    if isinstance(b, Fig):
        data = base64.b64encode(b.png).decode("ascii")
        return (
            f'<figure id="fig-{b.name}"><img alt="{_e(b.caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(b.caption)}</figcaption></figure>"
        )
    if isinstance(b, Table):

        def cell(tag, i, v):
            return (
                f'<{tag} class="num">{_e(v)}</{tag}>'
                if i in b.numeric
                else f"<{tag}>{_e(v)}</{tag}>"
            )

        head = "<tr>" + "".join(cell("th", i, h) for i, h in enumerate(b.headers)) + "</tr>"
        body = "".join(
            ('<tr class="hl">' if j in b.highlight else "<tr>")
            + "".join(cell("td", i, v) for i, v in enumerate(r))
            + "</tr>"
            for j, r in enumerate(b.rows)
        )
        tid = f' id="table-{b.name}"' if b.name else ""
        return (
            f'<div class="scroll"><table class="sortable"{tid}><thead>{head}</thead>'
            f"<tbody>{body}</tbody></table></div>"
        )
    raise TypeError(type(b))


def _md(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def to_markdown(d: ReportData, sections: list[Section], fig_dir: str = "figures") -> str:
    out = [
        f"# autofuse report: study {d.study}",
        "",
        f"dataset {d.dataset.get('name', '?')} · objective {d.metric} ({d.direction}) · "
        f"generated {d.generated_at}",
        "",
    ]
    out.append(" · ".join(f"[{s.title}](#{s.id})" for s in sections))
    out.append("")
    for s in sections:
        out += [f'<a id="{s.id}"></a>', "", f"## {s.title}", ""]
        for b in s.blocks:
            if isinstance(b, P):
                out += [f"*{b.text}*" if b.muted else b.text, ""]
            elif isinstance(b, H3):
                out += [f"### {b.text}", ""]
            elif isinstance(b, KV):
                out += [f"- **{k}:** {_md(v)}" for k, v in b.items] + [""]
            elif isinstance(b, Pre):
                out += ["```json", b.text, "```", ""]
            elif isinstance(b, Fig):
                out += [f"![{b.caption}]({fig_dir}/{b.name}.png)", ""]
            elif isinstance(b, Table):
                out.append("| " + " | ".join(_md(h) for h in b.headers) + " |")
                out.append(
                    "|"
                    + "|".join("---:" if i in b.numeric else "---" for i in range(len(b.headers)))
                    + "|"
                )
                out += ["| " + " | ".join(_md(v) for v in r) + " |" for r in b.rows]
                out.append("")
    return "\n".join(out)


def render(d: ReportData, out_dir: Path) -> dict[str, Path]:
    """Write ``report.html``, ``report.md``, ``figures/*.png`` and ``report.json`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    for old in fig_dir.glob("*.png"):
        old.unlink()
    sections = build_sections(d)
    for s in sections:
        for b in s.blocks:
            if isinstance(b, Fig):
                (fig_dir / f"{b.name}.png").write_bytes(b.png)
    paths = {
        "html": out_dir / "report.html",
        "markdown": out_dir / "report.md",
        "data": out_dir / "report.json",
        "figures": fig_dir,
    }
    for key, text in (
        ("html", to_html(d, sections)),
        ("markdown", to_markdown(d, sections)),
        ("data", json.dumps(d.to_dict(), indent=2)),
    ):
        tmp = paths[key].with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(paths[key])
    return paths


__all__ = ["SECTIONS", "render", "build_sections", "to_html", "to_markdown", "leaderboard_table"]
