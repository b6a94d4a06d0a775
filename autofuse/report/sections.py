"""Lay the report out: :class:`ReportData` -> sections of blocks (no HTML or Markdown here).

One builder per section, in report order (:data:`SECTIONS`); :func:`build_sections` runs them
all. The printers (:mod:`autofuse.report.printers`) turn the same sections into HTML and
Markdown, so both say the same thing with the same numbers.
"""

from __future__ import annotations

from autofuse._util import best_first, first_line, json_text
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
    fig_seeds,
    fig_stage_models,
)
from autofuse.report.labels import (
    CV,
    IN_SAMPLE,
    VALIDATION,
    best_kind,
    label,
    row_short,
    short,
    study_label,
    study_short,
    value_kind,
)
from autofuse.report.selection import SECTION_ID, SECTION_TITLE, rho_text, section_selection

#: section ids in report order (``<section id=...>`` in the HTML, anchors in the Markdown)
_TITLES = {
    "summary": "Summary",
    SECTION_ID: SECTION_TITLE,
    "best": "Best architecture",
    "stages": "Stages",
    "leaderboard": "Leaderboard",
    "comparison": "Family and fusion-point comparison",
    "baselines": "Search versus baselines",
    "dynamics": "Search dynamics",
    "robustness": "Robustness of the finalists",
    "cost": "Cost",
}
SECTIONS = {sid: f"{i}. {title}" for i, (sid, title) in enumerate(_TITLES.items(), start=1)}

NO_TRIAL = "No trial completed."


def _section(sid: str) -> Section:
    return Section(sid, SECTIONS[sid])


def _tag(kind: str) -> str:
    """The mark of a figure that is not plain validation: ``CV`` or ``in-sample``."""
    return {CV: "CV", IN_SAMPLE: "in-sample"}.get(kind, "")


def _vcell(v: float | None, kind: str = VALIDATION) -> str:
    """A selection / validation figure in a table cell, marked when it is not plain validation."""
    t = _tag(kind)
    return f"{fmt(v)} ({t})" if t and v is not None else fmt(v)


def _searched(d: ReportData) -> list:
    """The rows the search ranked (a staged study's stage-2 trials)."""
    return [r for r in d.trials if r.stage in (None, "fusion")] if d.staged else d.trials


def _marks_note(d: ReportData) -> str:
    k = (d.selection or {}).get("folds")
    return (
        f"Marks: (CV) a selection estimate, the mean over {k or 'K'} cross-validation folds; "
        "(in-sample) validation that also chose the ensemble; unmarked: validation (single "
        "split)."
    )


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


def _trials(numbers: list[int]) -> str:
    """``9``, ``9 and 12``, ``3, 9 and 12``."""
    s = [str(n) for n in numbers]
    return s[0] if len(s) == 1 else ", ".join(s[:-1]) + " and " + s[-1]


def _member_str(m: dict) -> str:
    return f"trial {m['trial']} ({m['fusion']}@{m['point']}, weight {fmt(m['weight'], 2)})"


def _best_what(b: dict) -> str:
    """The best design in a few words (the winner's ensemble, or one trial)."""
    if b.get("kind") == "ensemble":
        return "the greedy ensemble of " + ", ".join(_member_str(m) for m in b["members"])
    return f"{b['fusion']} fused at the {b['point']} point (trial {b['trial']})"


def _verdict(d: ReportData) -> str:
    if not d.best:
        return "No trial completed, so there is no recommendation yet."
    b = d.best
    test = b["test_metrics"].get(d.metric)
    bk, bf = best_kind(b)
    text = f"Use {_best_what(b)}: {label(bk, bf)} {d.metric} {fmt(b['value'])}, test {d.metric} {fmt(test)}"
    if b.get("why"):
        text = f"{text} (the staged search's winner: {b['why']})"
    elif d.staged:
        text += (
            f" (the staged search recorded no winner: this is its best {b.get('stage') or 'fusion'}"
            " trial)"
        )
    done = [x for x in d.baselines if x["val"] is not None and x["trial"] != b["trial"]]
    if b.get("baseline"):
        text += (
            f". It is the hand-designed baseline {b['baseline']}; the search found nothing better"
        )
    elif done:
        top = best_first(done, lambda x: x["val"], d.direction)[0]
        tr = d.trial(top["trial"])
        tk = value_kind(tr)
        if tk == bk:
            text += (
                f", {fmt_signed(top['val_diff'])} {short(bk, bf)} / {fmt_signed(top['test_diff'])} "
                f"test {d.metric} against the best baseline ({top['baseline']})"
            )
        else:  # e.g. the winner's validation against the baseline's CV estimate
            text += (
                f", {fmt_signed(top['test_diff'])} test {d.metric} against the best baseline "
                f"({top['baseline']}: {row_short(tr)} {fmt(top['val'])}, not comparable with the "
                f"winner's {short(bk, bf)} figure)"
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
        (
            "Objective",
            f"{d.metric} ({d.direction}); the search ranked its designs by "
            f"{study_label(_searched(d))}",
        ),
        ("Search space", f"{d.space_name or '?'}; budget {d.budget_trials or '?'} trials"),
        (
            "Wall time",
            f"{fmt_s(d.wall_time_s)} (last search run); {fmt_s(d.span_s)} from the first "
            f"trial's start to the last trial's end",
        ),
        ("Trials", trials),
    ]
    if d.stages:
        items.append(
            (
                "Stages",
                "; ".join(
                    f"{x['stage']} {x['trials']} trials ({fmt_s(x['trial_time_s'])})"
                    for x in d.stages["stages"]
                ),
            )
        )
    if d.best:
        b = d.best
        arch = (
            _best_what(b)
            if b.get("kind") == "ensemble"
            else f"trial {b['trial']}: {b['fusion']} at {b['point']} [{enc_str(b['encoders'])}]"
        )
        items += [
            ("Best architecture", arch),
            ("Best test metrics", _metrics_line(b["test_metrics"]) + " (test)"),
        ]
    if d.selection and d.selection.get("n_designs"):
        items.append(("Selection versus test", rho_text(d.selection)))
    items += [
        (
            f"Trial {f['trial']} failed",
            f"{f.get('reason') or ''} {first_line(f.get('error') or '')}".strip(),
        )
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
    if b.get("kind") == "ensemble":
        sec.add(
            P(
                f"The winner is a greedy ensemble of {len(b['members'])} finalist models (their "
                f"outputs averaged with the weights below): {label(*best_kind(b))} {d.metric} "
                f"{fmt(b['value'])}, test {_metrics_line(b['test_metrics'])}; "
                f"{fmt_int(b.get('n_params'))} parameters and {fmt(b.get('latency_ms'), 3)} ms "
                f"per sample over all members." + (f" Why: {b['why']}." if b.get("why") else "")
            ),
            _members_table(d, b["members"], name="best_members"),
            P(f"Below: its heaviest member, trial {b['trial']}."),
        )
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
    ]
    if b.get("kind") == "ensemble":
        m = d.trial(b["trial"])
        items += [
            ("Parameters", fmt_int(m.n_params)),
            ("Latency", f"{fmt(m.latency_ms, 3)} ms per sample"),
            ("Validation metrics", _metrics_line(m.val_metrics)),
            ("Test metrics", _metrics_line(m.test_metrics)),
        ]
    else:
        items += [
            ("Parameters", fmt_int(b.get("n_params"))),
            ("Latency", f"{fmt(b.get('latency_ms'), 3)} ms per sample"),
            (
                f"{label(*best_kind(b))[0].upper()}{label(*best_kind(b))[1:]} metrics",
                _metrics_line(b["val_metrics"]),
            ),
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
    return sec.add(Pre(json_text(spec)))


# ---- stages ----------------------------------------------------------------------------------

STAGE_MEANING = {
    "unimodal": "each modality's encoder trained alone with a linear head",
    "fusion": "fusion designs searched on the stage-1 encoders' features",
    "finalist": "the best designs fine-tuned end to end, several seeds each",
}


def _members_table(d: ReportData, members: list[dict], name: str = "winner_members") -> Table:
    """The winner's models: trial, design, seed, fusion, weight, validation and test metric."""
    rows = [
        [str(m["trial"]), str(m["design"] if m["design"] is not None else "-")]
        + [str(m["seed"] if m["seed"] is not None else "-"), f"{m['fusion']}@{m['point']}"]
        + [fmt(m["weight"], 2), fmt(m["value"]), fmt(m["test"]), fmt_int(m["n_params"])]
        for m in members
    ]
    headers = ["trial", "design", "seed", "fusion", "weight", f"val {d.metric}"]
    return Table(
        [*headers, f"test {d.metric}", "params"],
        rows,
        name=name,
        numeric={0, 1, 2, 4, 5, 6, 7},
    )


def _stage_time_table(s: dict) -> Table:
    rows = [
        [x["stage"], str(x["trials"]), str(x["completed"]), str(x["pruned"]), str(x["failed"])]
        + [str(x["low_fidelity"]), fmt_s(x["trial_time_s"]), fmt_s(x["train_time_s"])]
        + [fmt_s(x["span_s"])]
        for x in s["stages"]
    ]
    headers = ["stage", "trials", "completed", "pruned", "failed", "low fidelity"]
    return Table(
        [*headers, "trial time", "training time", "wall span"],
        rows,
        name="stages",
        numeric=set(range(1, 9)),
    )


def _models_table(d: ReportData, s: dict) -> Table:
    """Each modality's best unimodal model, the best stage-2 design, the best single finalist
    and the winner; difference = model - best unimodal model (validation)."""
    uni_best = next((u for u in s["unimodal"] if u["modality"] == s["best_unimodal"]), None)
    ref = uni_best["val"] if uni_best else None

    def diff(v: float | None) -> str:
        return fmt_signed(v - ref) if v is not None and ref is not None else "-"

    def kind(trial: int | None) -> str:
        return value_kind(d.trial(trial)) if trial is not None else VALIDATION

    rows, hl = [], set()
    for u in s["unimodal"]:
        rows.append(
            [f"{u['modality']} alone", str(u["trial"] if u["trial"] is not None else "-")]
            + ["unimodal", u["encoder"], _vcell(u["val"], kind(u["trial"])), fmt(u["test"])]
            + [diff(u["val"])]
        )
    bf = s.get("best_fusion")
    if bf:
        kept = f" on {', '.join(bf['kept'])}" if bf.get("kept") else ""
        fk = kind(bf["trial"])
        rows.append(
            ["best fusion design", str(bf["trial"]), "fusion"]
            + [f"{bf['fusion']}@{bf['point']}{kept}", _vcell(bf["val"], fk), fmt(bf["test"])]
            + [diff(bf["val"]) if fk == kind(uni_best and uni_best["trial"]) else "-"]
        )
    w = s.get("winner")
    bs = (w or {}).get("best_single") or s.get("best_finalist")
    if bs:
        rows.append(
            ["best single finalist", str(bs["trial"]), "finalist"]
            + [f"{bs['fusion']}@{bs['point']} (design {bs['design']}, seed {bs['seed']})"]
            + [_vcell(bs["val"], kind(bs["trial"])), fmt(bs["test"]), diff(bs["val"])]
        )
    if w:
        hl.add(len(rows))
        wk = best_kind(d.best)[0]
        rows.append(
            [f"winner ({w['kind']})", "+".join(str(n) for n in w["trials"]), "finalist"]
            + [", ".join(f"{m['fusion']}@{m['point']}" for m in w["members"])]
            + [_vcell(w["val"], wk), fmt(w["test"]), diff(w["val"]) if wk == VALIDATION else "-"]
        )
    headers = ["model", "trial", "stage", "design", f"val {d.metric}", f"test {d.metric}"]
    return Table(
        [*headers, "val difference to best unimodal"],
        rows,
        name="unimodal_vs_fused",
        numeric={1, 4, 5, 6},
        highlight=hl,
    )


def _single_vs_ensemble(d: ReportData, sec: Section, s: dict) -> None:
    w = s.get("winner")
    if not w:
        plan = (s.get("recorded") or {}).get("finalist", {}).get("plan") or {}
        why = plan.get("note") if plan.get("skipped") else "the finalist stage did not finish"
        sec.note(f"No winner recorded: {why} (no completed finalist).")
        return
    chosen = (
        f"a greedy ensemble of {len(w['members'])} finalist models"
        if w["kind"] == "ensemble"
        else f"a single model, trial {w['trials'][0]}"
    )
    sec.add(P(f"Chosen: {chosen}. Why: {w.get('why') or '(not recorded)'}."))
    sec.add(_members_table(d, w["members"]))
    bs = w.get("best_single")
    wk = best_kind(d.best)[0]
    rows = [
        [f"winner ({w['kind']})", "+".join(str(n) for n in w["trials"]), _vcell(w["val"], wk)]
        + [fmt(w["test"]), fmt_int(w.get("n_params")), fmt(w.get("latency_ms"), 3)]
    ]
    if bs and w["kind"] == "ensemble":
        r = d.trial(bs["trial"])
        rows.append(
            ["best single finalist", str(bs["trial"]), fmt(bs["val"]), fmt(bs["test"])]
            + [fmt_int(r.n_params), fmt(r.latency_ms, 3)]
        )
        rows.append(
            ["difference", "", fmt_signed(w["val"] - bs["val"]) if wk == VALIDATION else "-"]
            + [
                fmt_signed(w["test"] - bs["test"])
                if w["test"] is not None and bs["test"] is not None
                else "-",
                "",
                "",
            ]
        )
    rf = s.get("refit_full")
    if rf:  # the winner retrained on train + validation (--refit-full): no validation left
        rows.append(
            ["winner refit on train + val", "+".join(str(n) for n in w["trials"]), "-"]
            + [fmt((rf.get("test") or {}).get(d.metric)), "", ""]
        )
    headers = ["model", "trials", f"val {d.metric}", f"test {d.metric}", "params"]
    if rf:
        sec.note(
            "The refit trained the chosen model(s) again on the training and validation rows "
            f"together, for the epoch counts selection found ({rf.get('dir')}); it has no "
            "validation figure."
        )
    if wk != VALIDATION:
        sec.note(
            f"The winner's {label(wk)} figure is not comparable with a single model's validation "
            "figure (no validation difference shown); compare their test scores."
        )
    sec.add(
        Table(
            [*headers, "latency ms"],
            rows,
            name="single_vs_ensemble",
            numeric={2, 3, 4, 5},
            highlight={0},
        )
    )


def _seeds_table(d: ReportData, s: dict) -> Table:
    rows = []
    for g in s["seeds"]:
        vals = ", ".join(
            f"{fmt(v)} (seed {sd}, #{n})"
            for v, sd, n in zip(g["values"], g["seeds"], g["trials"], strict=True)
        )
        role = "winning design" if g["chosen"] else ""
        if g["in_winner"]:
            role = ", ".join(
                x for x in (role, "in winner: " + ", ".join(f"#{n}" for n in g["in_winner"])) if x
            )
        rows.append(
            [str(g["design"]), f"{g['fusion']}@{g['point']}", ", ".join(g["kept"] or []) or "-"]
            + [g["baseline"] or "", fmt(g["design_val"]), str(len(g["values"])), vals or "-"]
            + [f"{fmt(g['mean'])} +/- {fmt(g['std'])}" if g["mean"] is not None else "-"]
            + [fmt(g["test_mean"]), role]
        )
    stage2 = study_short(_searched(d))
    headers = [
        "design",
        "fusion",
        "modalities",
        "baseline",
        f"stage-2 {stage2} {d.metric}",
        "seeds",
    ]
    return Table(
        [*headers, f"val {d.metric} per seed", "mean +/- std", f"mean test {d.metric}", "role"],
        rows,
        name="seeds",
        numeric={0, 4, 5, 8},
        highlight={i for i, g in enumerate(s["seeds"]) if g["chosen"]},
    )


def section_stages(d: ReportData) -> Section:
    sec = _section("stages")
    s = d.stages
    if not s:
        return sec.note(
            "A single-stage search: every trial trained its whole design end to end, so there "
            "are no stages to compare."
        )
    sec.add(
        P(
            "A staged search: "
            + "; ".join(
                f"{x['stage']} ({STAGE_MEANING.get(x['stage'], 'stage')})" for x in s["stages"]
            )
            + ". All stages are trials of one study."
        )
    )
    if s.get("warning"):
        sec.note(f"Warning: {s['warning']}.")
    plan = (s.get("recorded") or {}).get("finalist", {}).get("plan")
    if plan:  # stage 3 sized from the designs' measured epoch cost, or skipped
        note = plan["note"] + (f"; it ended: {plan['ended']}" if plan.get("ended") else "")
        sec.note(f"{note[0].upper()}{note[1:]}." if plan.get("skipped") else f"Stage 3: {note}.")
    sec.add(H3("Time and trials per stage"))
    sec.add(
        P(
            "From the trial history: trial time sums each trial's wall time, training time its "
            "time in the training loop, wall span runs from the stage's first start to its last "
            "end. Low fidelity: trials that reached their time limit and report their best epoch "
            "so far."
        )
    )
    sec.add(_stage_time_table(s))
    sec.add(H3("Unimodal versus fused"))
    sec.add(
        P(
            f"Each modality's best stage-1 model (its encoder alone) next to the best fusion "
            f"design of stage 2 and the finalists; their selection figure (what the search "
            f"chose by) and test {d.metric} (for reference). {_marks_note(d)}"
            + (
                f" The winner is {fmt_signed(s['winner_vs_unimodal'])} "
                f"{short(*best_kind(d.best))} {d.metric} from the best unimodal model's "
                f"validation ({s['best_unimodal']})."
                if s.get("winner_vs_unimodal") is not None
                else ""
            )
        )
    )
    sec.add(_models_table(d, s))
    sec.figure(
        "stage_models",
        fig_stage_models(d),
        f"Selection figure (solid: validation, the stage-2 design's {study_label(_searched(d))}, "
        f"the winner's {label(*best_kind(d.best))}) and test (hatched) {d.metric}: the winner, "
        "the best single finalist, the best stage-2 design and each modality alone.",
        "No completed model to compare.",
    )
    sec.add(H3("Single model versus ensemble"))
    _single_vs_ensemble(d, sec, s)
    sec.add(H3("Seed spread of the finalists"))
    if not s["seeds"]:
        return sec.note("No finalist trial: the search did not reach stage 3.")
    sec.add(
        P(
            f"Each finalist design (a stage-2 trial) fine-tuned with several seeds: the seeds' "
            f"validation {d.metric}, their mean +/- standard deviation (population, as the "
            f"winner's choice computes it) and the design's stage-2 value "
            f"({study_label(_searched(d))}). The winning design has "
            "the best mean over its seeds (ties: fewer parameters, then lower latency)."
        )
    )
    sec.add(_seeds_table(d, s))
    return sec.figure(
        "seeds",
        fig_seeds(d),
        f"Validation {d.metric} of each finalist design's seeds.",
        "No finalist completed.",
    )


def _role(d: ReportData, number: int) -> str:
    """A trial's part in a staged study's winner ("" when it has none)."""
    b = d.best or {}
    if number not in (b.get("trials") or []):
        return ""
    if b.get("kind") == "ensemble":
        w = b["weights"][b["trials"].index(number)]
        return f"ensemble member, weight {fmt(w, 2)}"
    return "winner"


def leaderboard_table(d: ReportData, limit: int | None = None) -> Table:
    """Completed trials best first: fusion, point, encoders, validation and test metrics.

    A staged study's table has a ``stage`` and a ``winner`` column and starts with its winner: a
    row for the ensemble (its members next), or the winning single model.
    """
    board = [d.trial(n) for n in d.leaderboard[: limit or LEADERBOARD_ROWS]]
    val_keys = _metric_keys([r.val_metrics for r in board], d.metric)
    test_keys = _metric_keys([r.test_metrics for r in board], d.metric)
    staged = d.staged
    extra = ["stage"] if staged else []
    headers = (
        ["rank", "trial", *extra, "family", "method", "point", "encoders", "baseline"]
        + (["winner", "val figures"] if staged else [])
        + [f"val {k}" for k in val_keys]
        + [f"test {k}" for k in test_keys]
        + ["params", "latency ms"]
    )
    rows = []
    b = d.best or {}
    if staged and b.get("kind") == "ensemble":
        rows.append(
            ["1", "+".join(str(n) for n in b["trials"]), "ensemble", "ensemble", "-", "-"]
            + [f"{len(b['trials'])} finalist models", "", "winner (ensemble)"]
            + [short(*best_kind(b))]
            + [fmt(b["value"]) if k == d.metric else "-" for k in val_keys]
            + [fmt(b["test_metrics"].get(k)) for k in test_keys]
            + [fmt_int(b.get("n_params")), fmt(b.get("latency_ms"), 3)]
        )
    for r in board:
        rows.append(
            [str(len(rows) + 1), str(r.number)]
            + ([r.stage or "-"] if staged else [])
            + [r.family or "-", r.method or "-", r.point or "-", enc_str(r.encoders)]
            + [r.baseline or ""]
            + ([_role(d, r.number), row_short(r)] if staged else [])
            + [fmt(r.val_metrics.get(k)) for k in val_keys]
            + [fmt(r.test_metrics.get(k)) for k in test_keys]
            + [fmt_int(r.n_params), fmt(r.latency_ms, 3)]
        )
    first = 10 if staged else 7
    numeric = {0, 1} | set(range(first, len(headers)))
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
            f"Completed trials ranked by their value ({study_label(d.trials)}) {d.metric}"
            + (f" (top {LEADERBOARD_ROWS} of {n})" if n > LEADERBOARD_ROWS else f" ({n})")
            + "; test metrics are for reference only (the search never sees them)."
            + (
                " The val figures column says what each row's val metrics are: validation, a "
                "K-fold CV selection estimate (out-of-fold), or in-sample validation (an "
                "ensemble chosen on the predictions it is scored on)."
                if d.staged
                else ""
            )
        )
    )
    if d.staged:
        sec.note(
            "A staged study: its best design is the winner the search chose (listed first, "
            "whatever its rank by value), not whichever trial scored highest: a stage-1 unimodal "
            "model or one seed of a finalist may score higher on the validation split by chance."
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
    sel = study_short(_searched(d))
    headers = [
        "trials",
        "completed",
        "pruned",
        "failed",
        f"best {sel} {d.metric}",
        "median",
        "mean",
    ]
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
            f"Every completed trial's {study_label(_searched(d))} {d.metric}, grouped; the star "
            "marks the "
            "group's best. Pruned and failed trials are counted in the tables but have "
            "no final score."
        )
    )
    if d.staged:
        sec.note(
            "A staged study: the fusion search's trials (stage 2) only; the unimodal models "
            "(stage 1) and the fine-tuned finalists (stage 3) are in the Stages section."
        )
    for kind, title in GROUP_TITLES.items():
        groups = d.groups.get(kind, [])
        sec.add(H3(title[0].upper() + title[1:]))
        if not groups:
            sec.note("No trials.")
            continue
        sec.figure(
            f"by_{kind}",
            fig_group(d, kind, f"{study_short(_searched(d))} {d.metric} {title}"),
            f"{study_label(_searched(d))} {d.metric} {title}: one dot per completed trial, the "
            "star marks the best, boxes where a group has 3 or more trials.",
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
    what = (
        f"the winner, {_best_what(b)}"
        if b.get("kind") == "ensemble"
        else f"trial {b['trial']} ({b['fusion']} at {b['point']})"
    )
    how = (
        "of the fusion search (stage 2, trained on the stage-1 encoders' features; enqueued first)"
        if d.staged
        else "(enqueued first, same encoders as the space's first choice)"
    )
    sec.add(
        P(
            f"The hand-designed baselines {how} against the best design found, {what}. "
            "Difference = best - baseline"
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
            _vcell(x["val"], value_kind(d.trial(x["trial"]))),
            fmt(x["test"]),
            fmt_signed(x["val_diff"]),
            fmt_signed(x["test_diff"]),
            fmt_int(x["n_params"]),
        ]
        for x in d.baselines
    ]
    ens = b.get("kind") == "ensemble"
    rows.append(
        [
            "best found",
            "+".join(str(n) for n in b["trials"]) if ens else str(b["trial"]),
            "ensemble" if ens else f"{b['fusion']}@{b['point']}",
            "complete",
            _vcell(b["value"], best_kind(b)[0]),
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
    kinds = {value_kind(d.trial(x["trial"])) for x in d.baselines if x["val"] is not None}
    sec.note(
        _marks_note(d)
        + (
            " The val difference compares figures of different kinds (not like for like); "
            "the test difference is the fair one."
            if kinds - {best_kind(b)[0]}
            else ""
        )
    )
    return sec.figure(
        "baselines",
        fig_baselines(d),
        f"Selection figure (solid; the best design's {label(*best_kind(b))}, the baselines' "
        f"{study_label(_searched(d))}) and test (hatched) {d.metric}.",
        "No baseline completed.",
    )


def _pareto_table(d: ReportData, front: list[int]) -> Table:
    rows = []
    for n in front:
        r = d.trial(n)
        rows.append(
            [str(n), r.fusion, r.point or "-", _vcell(r.value, value_kind(r)), fmt_int(r.n_params)]
            + [fmt(r.latency_ms, 3), "yes" if n in d.pareto.get("latency_ms", []) else ""]
        )
    headers = ["trial", "fusion", "point", f"val {d.metric}", "params", "latency ms"]
    return Table([*headers, "also on latency front"], rows, name="pareto", numeric={0, 3, 4, 5})


def section_dynamics(d: ReportData) -> Section:
    sec = _section("dynamics").add(H3("Optimisation history"))
    sec.figure(
        "history",
        fig_history(d),
        f"Objective per trial ({study_label(d.trials)}; test chose nothing) and the best so far.",
        "No trial reported a value.",
    )
    sec.add(H3("Parameter importances"))
    if d.importances:
        sec.add(
            P(
                "fANOVA importances (Optuna) over the choices every completed trial made: "
                "fusion method, fusion point, encoders and the shared hyperparameters."
                + (" A staged study: the fusion search's trials (stage 2)." if d.staged else "")
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
            + (
                " A staged study: the models that run end to end, the unimodal models (stage 1) "
                "and the finalists (stage 3); a fusion-search trial's size and latency leave out "
                "the stage-1 encoders it reads."
                if d.staged
                else ""
            )
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


def _robust_entries(rb: dict) -> list[dict]:
    """The evaluated models, the ensemble last (labelled by its members' trials)."""
    fins = list(rb["finalists"])
    if rb.get("ensemble"):
        e = rb["ensemble"]
        fins.append(
            {**e, "trial": "+".join(str(n) for n in e["trials"]), "fusion": "ensemble", "point": ""}
        )
    return fins


def _robust_intro(d: ReportData, n: int) -> str:
    b = d.best or {}
    if not d.staged or not b.get("members"):
        return f"The top {n} designs,"
    if b.get("kind") == "ensemble":
        return (
            f"The winner's ensemble: its {len(b['members'])} members (trials "
            f"{_trials(b['trials'])}), and the ensemble itself (the members' outputs under each "
            "perturbation combined with the winner's weights),"
        )
    return f"The winner's single model (trial {b['trial']}),"


def section_robustness(d: ReportData) -> Section:
    sec = _section("robustness")
    rb = d.robustness
    if not rb:
        return sec.note(f"Not evaluated: {d.robustness_note}.")
    worse = "below 1 = worse"
    sec.add(
        P(
            f"{_robust_intro(d, len(rb['finalists']))} rebuilt from the checkpoints and "
            f"evaluated on the test split ({rb['device']}) with each modality removed (every "
            f"sample marked absent) and with Gaussian noise of {rb['sigma']} times the input's "
            "standard deviation added to it. Relative robustness (MultiBench) = "
            f"{d.metric} under the perturbation / clean {d.metric} "
            + ("" if d.direction == "maximize" else "(inverted, as lower is better) ")
            + f"({worse}). Noise leaves token ids and category codes unchanged, so it only "
            "perturbs continuous inputs (pixels, audio, numbers, time series, frozen features)."
        )
    )
    skipped = rb.get("skipped") or []  # checkpoints that could not be read
    for sk in skipped:
        sec.note(f"Trial {sk['trial']} not evaluated: {sk['error']}.")
    missing = [
        n
        for n in (d.best or {}).get("trials") or []
        if n not in {f["trial"] for f in rb["finalists"]} | {sk["trial"] for sk in skipped}
    ]
    if d.staged and missing:
        sec.note(
            f"Trial(s) {_trials(missing)} of the winner kept no checkpoint: not evaluated"
            + ("; nor the ensemble as a whole." if d.best.get("kind") == "ensemble" else ".")
        )
    fins = _robust_entries(rb)
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

    def cell(c: dict) -> str:
        if not c.get("used", True):
            return "not used"
        return f"{fmt(c['metrics'].get(d.metric))} ({fmt(c['relative'], 3)})"

    for i, (m, how) in enumerate(conds):
        label = f"{m} removed" if how == "remove" else f"{m} + noise (sigma {rb['sigma']})"
        crow.append([label] + [cell(f["conditions"][i]) for f in fins])
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
def section_selection_numbered(d: ReportData) -> Section:
    """The "Selection versus test" section (:mod:`autofuse.report.selection`), numbered."""
    sec = section_selection(d)
    sec.title = SECTIONS[SECTION_ID]
    return sec


BUILDERS = (
    section_summary,
    section_selection_numbered,
    section_best,
    section_stages,
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
