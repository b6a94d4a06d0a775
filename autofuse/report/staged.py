"""What the report says about a staged search (plain data, no plotting here).

A staged search (:mod:`autofuse.stages`) runs three stages as trials of one study: ``unimodal``
(each modality's encoder trained alone), ``fusion`` (fusion designs searched on the stage-1
features) and ``finalist`` (the best designs fine-tuned end to end, several seeds each), then
picks a winner: one finalist model or a greedy ensemble of them. The report reads all of it as
data: the SQL history (``stage``, ``low_fidelity``), the trials' Optuna user attributes
(``unimodal``, ``kept``, ``finalist_of``, ``seed``, ``selection``) and the study's ``winner`` attribute (or
``summary.json``). It never imports the search code.

- :func:`stage_attrs` / :func:`annotate`: the per-trial stage attributes onto the report's rows;
- :func:`read_winner`: the study's winner;
- :func:`winner_best`: the winner as the report's "best design" (its single model or the ensemble);
- :func:`collect_stages`: the stages section's numbers (time and trials per stage, unimodal versus
  fused, single versus ensemble, the finalists' seed spread).
"""

from __future__ import annotations

import datetime as dt
import statistics
from typing import Any

import optuna

from autofuse._util import best_first, finite
from autofuse.report.rows import Row

#: the stages in search order (the names :mod:`autofuse.stages` writes, read here as data)
UNIMODAL, FUSION, FINALIST = "unimodal", "fusion", "finalist"
STAGE_ORDER = (UNIMODAL, FUSION, FINALIST)
#: the trial user attributes a staged search writes (besides ``stage``)
_ATTRS = ("stage", "unimodal", "kept", "finalist_of", "seed", "selection")


# ---- reading ---------------------------------------------------------------------------------


def stage_attrs(st: optuna.Study | None) -> dict[int, dict[str, Any]]:
    """Trial number -> the stage attributes its Optuna user attributes hold (empty without any)."""
    if st is None:
        return {}
    out = {}
    for t in st.get_trials(deepcopy=False):
        a = {k: t.user_attrs[k] for k in _ATTRS if k in t.user_attrs}
        if a:
            out[t.number] = a
    return out


def annotate(rows: list[Row], attrs: dict[int, dict[str, Any]]) -> None:
    """Fill each row's stage fields from the SQL history's ``stage`` and the trial attributes."""
    for r in rows:
        a = attrs.get(r.number, {})
        r.stage = r.stage or a.get("stage")
        if r.stage == UNIMODAL:
            uni = a.get("unimodal") or {}
            # the search records the modality as the trial's method too
            r.unimodal = uni.get("modality") or r.method
        if a.get("kept") is not None:
            r.kept = sorted(a["kept"])
        if a.get("finalist_of") is not None:
            r.design = int(a["finalist_of"])
        if a.get("seed") is not None:
            r.seed = int(a["seed"])
        if r.selection is None and a.get("selection") is not None:
            r.selection = a["selection"]  # normalised by the collector (labels.read_selection)


def read_winner(st: optuna.Study | None, summary: dict) -> dict | None:
    """The staged search's winner: the study's ``winner`` attribute, else ``summary.json``'s."""
    w = (st.user_attrs.get("winner") if st is not None else None) or summary.get("winner")
    return w if isinstance(w, dict) and w.get("trials") else None


def is_staged(rows: list[Row]) -> bool:
    return any(r.stage for r in rows)


def stage_of(r: Row) -> str:
    """A row's stage in a staged study (a trial without one was sampled by the fusion search)."""
    return r.stage or FUSION


def _done(rows: list[Row]) -> list[Row]:
    return [r for r in rows if r.status == "COMPLETE" and finite(r.value)]


def _test(r: Row | None, metric: str) -> float | None:
    return r.test_metrics.get(metric) if r is not None else None


def _label(r: Row) -> str:
    """The design of a row in a few words: ``family.method@point``."""
    return f"{r.fusion}@{r.point or '-'}"


# ---- the winner as the best design -----------------------------------------------------------


def _member(r: Row, weight: float, metric: str) -> dict[str, Any]:
    return {
        "trial": r.number,
        "weight": weight,
        "stage": r.stage,
        "design": r.design,
        "seed": r.seed,
        "fusion": r.fusion,
        "point": r.point,
        "encoders": r.encoders,
        "value": r.value,
        "test": _test(r, metric),
        "test_metrics": r.test_metrics,
        "n_params": r.n_params,
        "latency_ms": r.latency_ms,
        "has_checkpoint": r.has_checkpoint,
    }


def winner_best(
    winner: dict, rows: list[Row], specs: dict[int, dict | None], metric: str
) -> dict[str, Any] | None:
    """The report's best design for a staged study: the winner's single model or its ensemble.

    For an ensemble, ``trial``, ``spec``, ``fusion``, ``point`` and ``encoders`` describe its
    heaviest member (the first of equal weights); ``value``, ``val_metrics`` and ``test_metrics``
    are the ensemble's, ``n_params`` and ``latency_ms`` the sums over its members (every member
    runs). ``None`` when a winner trial is not in the history.
    """
    by_number = {r.number: r for r in rows}
    trials = [int(n) for n in winner["trials"]]
    if any(n not in by_number for n in trials):
        return None
    weights = [float(w) for w in winner.get("weights") or [1.0 / len(trials)] * len(trials)]
    members = [_member(by_number[n], w, metric) for n, w in zip(trials, weights, strict=True)]
    kind = winner.get("kind") or ("ensemble" if len(trials) > 1 else "single")
    main = by_number[trials[max(range(len(trials)), key=lambda i: (weights[i], -i))]]
    ensemble = kind == "ensemble"

    def total(key: str) -> float | None:
        vals = [getattr(by_number[n], key) for n in trials]
        return sum(vals) if all(finite(v) for v in vals) else None

    test = dict(winner.get("test") or {})
    return {
        "kind": kind,
        "trial": main.number,
        "trials": trials,
        "weights": weights,
        "members": members,
        "design": winner.get("design"),
        "why": winner.get("why"),
        "spec": specs.get(main.number),
        "value": winner["val"] if finite(winner.get("val")) else main.value,
        "val_metrics": {metric: winner.get("val")} if ensemble else main.val_metrics,
        "test_metrics": test if ensemble or not main.test_metrics else main.test_metrics,
        "n_params": total("n_params") if ensemble else main.n_params,
        "latency_ms": total("latency_ms") if ensemble else main.latency_ms,
        "baseline": None if ensemble else main.baseline,
        "fusion": "ensemble" if ensemble else main.fusion,
        "point": main.point,
        "encoders": main.encoders,
        "stage": main.stage,
    }


def end_to_end(rows: list[Row]) -> list[Row]:
    """A staged study's models that run end to end on raw inputs: the unimodal models and the
    finalists (a stage-2 trial's size and latency leave out the stage-1 encoders it reads)."""
    return [r for r in rows if stage_of(r) != FUSION]


def searched_board(board: list[Row]) -> list[Row]:
    """The designs a staged study stands behind when it has no winner: finalists, else the fusion
    search's trials (a stage-1 unimodal model is a baseline, never the answer)."""
    for stage in (FINALIST, FUSION):
        rows = [r for r in board if stage_of(r) == stage]
        if rows:
            return rows
    return board


# ---- the stages section ----------------------------------------------------------------------


def _span(rows: list[Row]) -> tuple[str | None, str | None, float | None]:
    starts = [r.started_at for r in rows if r.started_at]
    ends = [r.finished_at for r in rows if r.finished_at]
    if not starts or not ends:
        return min(starts, default=None), max(ends, default=None), None
    s, e = min(starts), max(ends)
    return s, e, (dt.datetime.fromisoformat(e) - dt.datetime.fromisoformat(s)).total_seconds()


def per_stage(rows: list[Row]) -> list[dict[str, Any]]:
    """Trials, outcomes and time of each stage, in search order."""
    order = {s: i for i, s in enumerate(STAGE_ORDER)}
    names = sorted({stage_of(r) for r in rows}, key=lambda s: (order.get(s, len(order)), s))
    out = []
    for name in names:
        rs = [r for r in rows if stage_of(r) == name]
        start, end, span = _span(rs)
        out.append(
            {
                "stage": name,
                "trials": len(rs),
                "completed": sum(r.status == "COMPLETE" for r in rs),
                "pruned": sum(r.status == "PRUNED" for r in rs),
                "failed": sum(r.status == "FAIL" for r in rs),
                "running": sum(r.status not in ("COMPLETE", "PRUNED", "FAIL") for r in rs),
                "low_fidelity": sum(bool(r.low_fidelity) for r in rs),
                "trial_time_s": sum(r.duration_s or 0.0 for r in rs),
                "train_time_s": sum(r.train_time_s or 0.0 for r in rs),
                "started_at": start,
                "finished_at": end,
                "span_s": span,
            }
        )
    return out


def _brief(r: Row, metric: str) -> dict[str, Any]:
    """One trial as the stages section compares it."""
    return {
        "trial": r.number,
        "stage": stage_of(r),
        "fusion": r.fusion,
        "point": r.point,
        "encoders": r.encoders,
        "kept": r.kept,
        "design": r.design,
        "seed": r.seed,
        "baseline": r.baseline,
        "val": r.value,
        "test": _test(r, metric),
        "n_params": r.n_params,
        "low_fidelity": bool(r.low_fidelity),
    }


def unimodal_best(rows: list[Row], metric: str, direction: str) -> list[dict[str, Any]]:
    """Each modality's best stage-1 model (a modality none of whose trials completed: no value)."""
    uni = [r for r in rows if stage_of(r) == UNIMODAL]
    out = []
    for m in sorted({r.unimodal or r.method or "?" for r in uni}):
        rs = [r for r in uni if (r.unimodal or r.method or "?") == m]
        done = best_first(_done(rs), lambda r: r.value, direction)
        d: dict[str, Any] = {"modality": m, "trials": len(rs), "completed": len(done)}
        if done:
            b = done[0]
            d.update(_brief(b, metric), encoder=", ".join(b.encoders.values()) or "-")
        else:
            d.update(trial=None, val=None, test=None, encoder="-")
        out.append(d)
    return out


def seed_spread(
    rows: list[Row], winner: dict | None, metric: str, direction: str
) -> list[dict[str, Any]]:
    """Per finalist design: its seeds' validation (and test) values, mean and population std (as
    the winner's choice computes them), best mean first; ``chosen`` marks the winning design."""
    fin = [r for r in rows if stage_of(r) == FINALIST and r.design is not None]
    by_number = {r.number: r for r in rows}
    in_winner = set((winner or {}).get("trials") or [])
    out = []
    for design in sorted({r.design for r in fin}):
        rs = sorted((r for r in fin if r.design == design), key=lambda r: (r.seed or 0, r.number))
        done = _done(rs)
        vals = [r.value for r in done]
        tests = [t for t in (_test(r, metric) for r in done) if finite(t)]
        src = by_number.get(design)
        out.append(
            {
                "design": design,
                "fusion": src.fusion if src else rs[0].fusion,
                "point": src.point if src else rs[0].point,
                "kept": src.kept if src else None,
                "baseline": src.baseline if src else None,
                "design_val": src.value if src else None,
                "trials": [r.number for r in done],
                "seeds": [r.seed for r in done],
                "values": vals,
                "test_values": tests,
                "mean": statistics.fmean(vals) if vals else None,
                "std": statistics.pstdev(vals) if vals else None,
                "test_mean": statistics.fmean(tests) if tests else None,
                "not_completed": len(rs) - len(done),
                "chosen": winner is not None and winner.get("design") == design,
                "in_winner": [r.number for r in done if r.number in in_winner],
            }
        )
    # the winner's order (best mean, ties broken by size and latency), else best mean first
    order = [g.get("design") for g in (winner or {}).get("designs") or []]
    scored = best_first([g for g in out if g["mean"] is not None], lambda g: g["mean"], direction)
    scored.sort(key=lambda g: order.index(g["design"]) if g["design"] in order else len(order))
    return scored + [g for g in out if g["mean"] is None]


def collect_stages(
    rows: list[Row],
    winner: dict | None,
    best: dict | None,
    summary: dict,
    metric: str,
    direction: str,
) -> dict[str, Any] | None:
    """The stages section's numbers; ``None`` for a single-stage study.

    Args:
        rows: every trial of the study (stage fields filled by :func:`annotate`).
        winner: the study's winner (:func:`read_winner`), ``None`` when it has none (yet).
        best: the report's best design (:func:`winner_best` of ``winner``).
        summary: ``summary.json`` (its per-stage totals and warning are kept as recorded).
        metric: the objective.
        direction: ``maximize`` / ``minimize``.
    """
    if not is_staged(rows):
        return None
    fusion = best_first(
        _done([r for r in rows if stage_of(r) == FUSION]), lambda r: r.value, direction
    )
    finals = best_first(
        _done([r for r in rows if stage_of(r) == FINALIST]), lambda r: r.value, direction
    )
    uni = unimodal_best(rows, metric, direction)
    scored_uni = best_first([u for u in uni if finite(u["val"])], lambda u: u["val"], direction)
    best_uni = scored_uni[0] if scored_uni else None
    win: dict[str, Any] | None = None
    if winner is not None and best is not None and best.get("members"):
        best_single = finals[0] if finals else None
        win = {
            "kind": best["kind"],
            "why": winner.get("why"),
            "design": winner.get("design"),
            "trials": best["trials"],
            "weights": best["weights"],
            "members": best["members"],
            "val": best["value"],
            "test": best["test_metrics"].get(metric),
            "test_metrics": best["test_metrics"],
            "n_params": best["n_params"],
            "latency_ms": best["latency_ms"],
            "best_single": _brief(best_single, metric) if best_single else None,
        }
    gain = None
    if win is not None and best_uni is not None:
        gain = win["val"] - best_uni["val"]
    return {
        "stages": per_stage(rows),
        "recorded": summary.get("stages") or {},
        "warning": summary.get("warning"),
        "unimodal": uni,
        "best_unimodal": best_uni["modality"] if best_uni else None,
        "best_fusion": _brief(fusion[0], metric) if fusion else None,
        "best_finalist": _brief(finals[0], metric) if finals else None,
        "winner": win,
        "winner_vs_unimodal": gain,
        "seeds": seed_spread(rows, winner, metric, direction),
        "refit_full": summary.get("refit_full"),
    }


__all__ = [
    "FINALIST",
    "FUSION",
    "STAGE_ORDER",
    "UNIMODAL",
    "annotate",
    "collect_stages",
    "end_to_end",
    "is_staged",
    "per_stage",
    "read_winner",
    "searched_board",
    "seed_spread",
    "stage_attrs",
    "stage_of",
    "unimodal_best",
    "winner_best",
]
