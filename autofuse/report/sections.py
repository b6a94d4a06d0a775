"""Lay the report out: :class:`ReportData` -> sections of blocks (no HTML or Markdown here).

One builder per section, in report order (:data:`SECTIONS`); :func:`build_sections` runs them
all. The printers (:mod:`autofuse.report.printers`) turn the same sections into HTML and
Markdown, so both say the same thing with the same numbers.
"""

from __future__ import annotations

import json

from autofuse._util import best_first
from autofuse.report.blocks import (
    H3,
    KV,
    POINT_FEEDS,
    P,
    Pre,
    Section,
    Table,
    enc_str,
    fmt,
    fmt_int,
    fmt_pct,
    fmt_s,
    fmt_signed,
)
from autofuse.report.collect import LEADERBOARD_ROWS, ReportData
from autofuse.report.figures import (
    fig_architecture,
    fig_baselines,
    fig_cost,
    fig_group,
    fig_history,
    fig_importances,
    fig_pareto,
    fig_robustness,
)

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

NO_TRIAL = "No trial completed."


def _section(sid: str) -> Section:
    return Section(sid, SECTIONS[sid])


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


def _metrics_line(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {fmt(v)}" for k, v in metrics.items())


def _params(p: dict) -> str:
    return ", ".join(f"{k}={fmt(v, 4) if isinstance(v, float) else v}" for k, v in p.items())


def _status(status: str, reason: str | None) -> str:
    s = status.lower()
    return f"{s} ({reason})" if reason and reason != s and status != "COMPLETE" else s


def _metric_keys(dicts: list[dict], metric: str) -> list[str]:
    keys = [metric] if any(metric in x for x in dicts) else []
    for x in dicts:
        keys += [k for k in x if k not in keys]
    return keys


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
        top = best_first(done, lambda x: x["val"], d.direction)[0]
        text += (
            f", {fmt_signed(top['val_diff'])} validation / {fmt_signed(top['test_diff'])} test "
            f"{d.metric} against the best baseline ({top['baseline']})"
        )
    return text + "."


# ---- sections --------------------------------------------------------------------------------


def section_summary(d: ReportData) -> Section:
    sec = _section("summary").add(P(_verdict(d)))
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
        items += [
            (
                "Best architecture",
                f"trial {b['trial']}: {b['fusion']} at {b['point']} [{enc_str(b['encoders'])}]",
            ),
            ("Best test metrics", _metrics_line(b["test_metrics"])),
        ]
    items += [
        (f"Trial {f['trial']} failed", f"{f.get('reason') or ''} {f.get('error') or ''}".strip())
        for f in d.failed[:5]
    ]
    items.append(("History", f"read from the {d.source} tables; report generated {d.generated_at}"))
    return sec.add(KV(items))


def section_best(d: ReportData) -> Section:
    sec = _section("best")
    if not d.best:
        return sec.note(NO_TRIAL)
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
    items += [
        (
            f"Encoder {m}",
            f"{e.get('name')} ({e.get('mode')}), dim={e.get('dim')}"
            + (f", {_params(e['params'])}" if e.get("params") else ""),
        )
        for m, e in spec.get("encoders", {}).items()
    ]
    items += [
        ("Head", _params(spec.get("head", {}))),
        ("Training", _params(spec.get("training", {}))),
        ("Parameters", fmt_int(b.get("n_params"))),
        ("Latency", f"{fmt(b.get('latency_ms'), 3)} ms per sample"),
        ("Validation metrics", _metrics_line(b["val_metrics"])),
        ("Test metrics", _metrics_line(b["test_metrics"])),
    ]
    sec.add(KV(items))
    sec.figure(
        "architecture",
        fig_architecture(d),
        "Modalities -> encoders -> fusion at its point -> head.",
        "No spec recorded for the best trial.",
    )
    sec.note(
        "The spec (rebuild with autofuse.build_model; the exported weights are in "
        f"trials/{d.study}/best/):"
    )
    return sec.add(Pre(json.dumps(spec, indent=2)))


def leaderboard_table(d: ReportData, limit: int | None = None) -> Table:
    """Completed trials best first: fusion, point, encoders, validation and test metrics."""
    board = [d.trial(n) for n in d.leaderboard[: limit or LEADERBOARD_ROWS]]
    val_keys = _metric_keys([r.val_metrics for r in board], d.metric)
    test_keys = _metric_keys([r.test_metrics for r in board], d.metric)
    headers = (
        ["rank", "trial", "family", "method", "point", "encoders", "baseline"]
        + [f"val {k}" for k in val_keys]
        + [f"test {k}" for k in test_keys]
        + ["params", "latency ms"]
    )
    rows = [
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
        for i, r in enumerate(board, start=1)
    ]
    numeric = {0, 1} | set(range(7, len(headers)))
    return Table(
        headers, rows, name="leaderboard", numeric=numeric, highlight={0} if rows else set()
    )


def section_leaderboard(d: ReportData) -> Section:
    sec = _section("leaderboard")
    if not d.leaderboard:
        return sec.note(NO_TRIAL)
    n = len(d.leaderboard)
    sec.add(
        P(
            f"Completed trials ranked by validation {d.metric}"
            + (f" (top {LEADERBOARD_ROWS} of {n})" if n > LEADERBOARD_ROWS else f" ({n})")
            + "; test metrics are for reference only (the search never sees them)."
        )
    )
    return sec.add(leaderboard_table(d))


#: the groups of the comparison section: kind (a key of ``ReportData.groups``) -> title
GROUP_TITLES = {
    "family": "per fusion family",
    "method": "per fusion method",
    "point": "per fusion point",
    "encoder": "per encoder choice",
}


def _group_table(d: ReportData, kind: str, groups: list[dict]) -> Table:
    headers = ["trials", "completed", "pruned", "failed", f"best val {d.metric}", "median", "mean"]
    rows = [
        [g["name"], str(g["trials"]), str(g["completed"]), str(g["pruned"]), str(g["failed"])]
        + [fmt(g["best"]), fmt(g["median"]), fmt(g["mean"]), fmt(g["best_test"].get(d.metric))]
        + [str(g["best_trial"] if g["best_trial"] is not None else "-")]
        for g in groups
    ]
    return Table(
        [kind, *headers, f"test {d.metric} of best", "best trial"],
        rows,
        name=f"by_{kind}",
        numeric=set(range(1, 10)),
        highlight={0} if groups and groups[0]["best"] is not None else set(),
    )


def section_comparison(d: ReportData) -> Section:
    sec = _section("comparison").add(
        P(
            f"Every completed trial's validation {d.metric}, grouped; the star marks the "
            "group's best. Pruned and failed trials are counted in the tables but have "
            "no final score."
        )
    )
    for kind, title in GROUP_TITLES.items():
        groups = d.groups.get(kind, [])
        sec.add(H3(title[0].upper() + title[1:]))
        if not groups:
            sec.note("No trials.")
            continue
        sec.figure(
            f"by_{kind}",
            fig_group(d, kind, f"validation {d.metric} {title}"),
            f"Validation {d.metric} {title}: one dot per completed trial, the star marks the best, "
            "boxes where a group has 3 or more trials.",
            "No completed trial.",
        )
        sec.add(_group_table(d, kind, groups))
    return sec


def section_baselines(d: ReportData) -> Section:
    sec = _section("baselines")
    if not d.baselines:
        return sec.note("No hand-designed baselines were enqueued in this study.")
    if not d.best:
        return sec.note(NO_TRIAL)
    b = d.best
    sec.add(
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
    rows = [
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
        for x in d.baselines
    ]
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
    headers = ["design", "trial", "fusion", "status", f"val {d.metric}", f"test {d.metric}"]
    sec.add(
        Table(
            [*headers, "val difference", "test difference", "params"],
            rows,
            name="baselines",
            numeric={1, 4, 5, 6, 7, 8},
            highlight={len(rows) - 1},
        )
    )
    return sec.figure(
        "baselines",
        fig_baselines(d),
        f"Validation (solid) and test (hatched) {d.metric}.",
        "No baseline completed.",
    )


def _pareto_table(d: ReportData, front: list[int]) -> Table:
    rows = []
    for n in front:
        r = d.trial(n)
        rows.append(
            [str(n), r.fusion, r.point or "-", fmt(r.value), fmt_int(r.n_params)]
            + [fmt(r.latency_ms, 3), "yes" if n in d.pareto.get("latency_ms", []) else ""]
        )
    headers = ["trial", "fusion", "point", f"val {d.metric}", "params", "latency ms"]
    return Table([*headers, "also on latency front"], rows, name="pareto", numeric={0, 3, 4, 5})


def section_dynamics(d: ReportData) -> Section:
    sec = _section("dynamics").add(H3("Optimisation history"))
    sec.figure(
        "history",
        fig_history(d),
        "Objective per trial and the best so far.",
        "No trial reported a value.",
    )
    sec.add(H3("Parameter importances"))
    if d.importances:
        sec.add(
            P(
                "fANOVA importances (Optuna) over the choices every completed trial made: "
                "fusion method, fusion point, encoders and the shared hyperparameters."
            )
        )
        sec.figure("importances", fig_importances(d), "Parameter importances.", "")
        sec.add(
            Table(
                ["parameter", "importance"],
                [[k, fmt(v, 3)] for k, v in d.importances.items()],
                name="importances",
                numeric={1},
            )
        )
    else:
        sec.note(f"Parameter importances are not available: {d.importances_note}.")
    sec.add(H3("Pareto front"))
    sec.add(
        P(
            f"Completed trials by validation {d.metric} against their size and their "
            "latency; the line joins the designs no other design beats on both."
        )
    )
    sec.figure(
        "pareto",
        fig_pareto(d),
        "Metric versus parameters (left) and latency (right).",
        NO_TRIAL,
    )
    front = d.pareto.get("n_params", [])
    if front:
        sec.add(_pareto_table(d, front))
    return sec


def section_robustness(d: ReportData) -> Section:
    sec = _section("robustness")
    rb = d.robustness
    if not rb:
        return sec.note(f"Not evaluated: {d.robustness_note}.")
    worse = "below 1 = worse"
    sec.add(
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
        [str(f["trial"]), f["fusion"], f["point"] or "-", fmt(f["clean"].get(d.metric))]
        + [fmt(f["recorded_test"].get(d.metric)), fmt(f["mean_relative"], 3)]
        + [fmt(f["worst_relative"], 3)]
        for f in fins
    ]
    headers = ["trial", "fusion", "point", f"clean test {d.metric}", f"recorded test {d.metric}"]
    sec.add(
        Table(
            [*headers, "mean relative", "worst relative"],
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
    sec.add(
        Table(
            ["condition"] + [f"#{f['trial']} {d.metric} (relative)" for f in fins],
            crow,
            name="robustness",
            numeric=set(range(1, len(fins) + 1)),
        )
    )
    return sec.figure(
        "robustness",
        fig_robustness(d),
        "Relative robustness per perturbation (1 = unchanged).",
        "",
    )


def section_cost(d: ReportData) -> Section:
    sec = _section("cost")
    c = d.cost
    cache = (
        "not recorded"
        if c.get("cache_hits") is None
        else f"{c['cache_hits']} hits, {c.get('cache_misses') or 0} misses"
    )
    sec.add(
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
    sec.figure(
        "cost", fig_cost(d), "Time per trial and worker utilisation.", "No timings recorded."
    )
    rows = [
        [w["worker"], str(w.get("device") or "-"), str(w["trials"]), str(w["completed"])]
        + [fmt_s(w["busy_s"]), fmt_s(w["train_s"]), fmt_pct(w["utilisation"])]
        for w in c.get("workers", [])
    ]
    if rows:
        sec.add(
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
    headers = ["trial", "status", "fusion", "wall time", "training", "epochs", "cache hits"]
    return sec.add(Table([*headers, "worker"], trows, name="trials", numeric={0, 3, 4, 5}))


#: the section builders, in report order (one per key of :data:`SECTIONS`)
BUILDERS = (
    section_summary,
    section_best,
    section_leaderboard,
    section_comparison,
    section_baselines,
    section_dynamics,
    section_robustness,
    section_cost,
)


def build_sections(d: ReportData) -> list[Section]:
    return [build(d) for build in BUILDERS]


__all__ = ["SECTIONS", "build_sections", "leaderboard_table"]
