"""Collect what the report shows: a study's trial history -> plain data (no plotting here).

Everything the renderer needs is computed here and kept JSON-able (``ReportData.to_dict``), so
the numbers in ``report.html`` / ``report.md`` can be checked against the SQL history. The one
place that reads the history is :func:`load_history`; the robustness of the finalists is measured
by :func:`autofuse.report.robustness.evaluate_finalists`, which rebuilds each finalist from its
checkpoint and evaluates it on the test split with every modality removed and with noise added.

A staged study (:mod:`autofuse.report.staged`) is read the same way, plus its stage attributes:
its best design is the winner (one finalist model or the ensemble), the leaderboard starts with
it, the comparisons and baselines are the fusion search's (stage 2), and ``ReportData.stages``
holds the stages section's numbers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution

from autofuse._util import best_first, better, finite, mask_url, sort_sign, sqlite_path
from autofuse.checkpoints import CheckpointStore, study_artifacts
from autofuse.errors import ConfigError
from autofuse.metrics import OBJECTIVES
from autofuse.report.labels import (
    CV,
    IN_SAMPLE,
    VALIDATION,
    collect_selection,
    folds,
    read_selection,
    value_kind,
    value_std,
)
from autofuse.report.robustness import N_FINALISTS, evaluate_finalists
from autofuse.report.rows import Row
from autofuse.report.staged import (
    FUSION,
    annotate,
    collect_stages,
    end_to_end,
    is_staged,
    read_winner,
    searched_board,
    stage_attrs,
    stage_of,
    winner_best,
)
from autofuse.storage import make_storage
from autofuse.storage.history import HistoryStore, StudyRecord, TrialRecord

log = logging.getLogger(__name__)

#: rows of the leaderboard
LEADERBOARD_ROWS = 15


# ---- the history ------------------------------------------------------------------------------


def load_history(study: str, storage: str) -> tuple[StudyRecord, list[TrialRecord], str]:
    """The study and its trials, from autofuse's ``autofuse_`` tables, else from Optuna's.

    Returns ``(study, trials, source)`` with ``source`` ``"autofuse history"`` or ``"optuna"``.
    Both give the same fields (the search writes them to both); Optuna's user attributes are the
    fallback for databases written before the history tables existed.
    """
    db = sqlite_path(storage)
    if db is not None and not db.exists():  # do not create an empty database to find nothing
        raise ConfigError(f"no study database at {db}; run a search first or pass --storage")
    try:
        hs = HistoryStore(storage, create=False)  # a report never changes the database
        rec = hs.study(study)
        trials = hs.trials(study) if rec is not None else []
        if rec is not None and trials:
            return _fill_study(rec, storage), trials, "autofuse history"
    except ConfigError as e:  # no autofuse tables (old database) or an old schema
        log.info("autofuse history not usable (%s); reading Optuna's trial attributes", e)
    return _from_optuna(study, storage)


def _optuna_study(study: str, storage: str) -> optuna.Study:
    try:
        return optuna.load_study(study_name=study, storage=make_storage(storage))
    except KeyError:
        raise ConfigError(f"--study {study!r}: no such study in {mask_url(storage)}") from None


def _study_from_optuna(st: optuna.Study, rec: StudyRecord | None = None) -> StudyRecord:
    """A study record from Optuna's study attributes; fields ``rec`` already has are kept."""
    a = st.user_attrs
    created = min(
        (t.datetime_start for t in st.get_trials(deepcopy=False) if t.datetime_start), default=None
    )
    old = rec or StudyRecord(st.study_name, None, None, None, None, None, None, created)
    return dataclasses.replace(
        old,
        dataset_fingerprint=old.dataset_fingerprint or a.get("dataset_fingerprint"),
        dataset_info=old.dataset_info or a.get("dataset"),
        dataset_path=old.dataset_path or a.get("dataset_path"),
        space=old.space or a.get("space"),
        metric=old.metric or a.get("metric"),
        direction=old.direction or st.direction.name.lower(),
    )


def _fill_study(rec: StudyRecord, storage: str) -> StudyRecord:
    """Complete a history study record with what only Optuna's study attributes hold."""
    if rec.dataset_path and rec.space and rec.metric and rec.direction:
        return rec
    try:
        return _study_from_optuna(_optuna_study(rec.name, storage), rec)
    except ConfigError:
        return rec


def _from_optuna(study: str, storage: str) -> tuple[StudyRecord, list[TrialRecord], str]:
    st = _optuna_study(study, storage)
    trials = [TrialRecord.from_optuna(t) for t in st.get_trials(deepcopy=False)]
    return _study_from_optuna(st), trials, "optuna"


# ---- plain data -------------------------------------------------------------------------------


@dataclass
class ReportData:
    study: str
    source: str
    generated_at: str
    metric: str
    direction: str
    dataset: dict
    dataset_path: str | None
    space_name: str | None
    budget_trials: int | None
    wall_time_s: float | None
    span_s: float | None
    counts: dict[str, int]
    pruned_reasons: dict[str, int]
    failed: list[dict]
    trials: list[Row]
    leaderboard: list[
        int
    ]  # trial numbers, best first (completed only; a staged study's winner first)
    best: dict | None  # best design: trial number, spec, metrics, params, latency (kind, members)
    groups: dict[str, list[dict]]  # family / method / point / encoder -> rows
    baselines: list[dict]
    importances: dict[str, float]
    importances_note: str | None
    pareto: dict[str, list[int]]  # "n_params" / "latency_ms" -> trial numbers on the front
    robustness: dict | None
    robustness_note: str | None
    cost: dict = field(default_factory=dict)
    stages: dict | None = None  # a staged study's stages section (None: single-stage)
    # selection versus test (autofuse.report.labels.collect_selection): the designs' selection
    # figures against their test scores, Spearman's rho, the winner / baseline / unimodal table
    selection: dict | None = None

    @property
    def staged(self) -> bool:
        return self.stages is not None

    def trial(self, number: int) -> Row:
        return next(r for r in self.trials if r.number == number)

    @property
    def completed(self) -> list[Row]:
        return [r for r in self.trials if r.status == "COMPLETE" and finite(r.value)]

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=str))


def _iso(t: dt.datetime | None) -> str | None:
    return t.isoformat(timespec="seconds") if t else None


def _row(t: TrialRecord, checkpoints: set[int], metric: str) -> Row:
    dur = (t.finished_at - t.started_at).total_seconds() if t.started_at and t.finished_at else None
    last = t.value
    if not finite(last) and t.history:
        last = t.history[-1].get(metric)
    return Row(
        number=t.number,
        status=t.status,
        reason=t.reason,
        baseline=t.baseline,
        family=t.family,
        method=t.method,
        point=t.point,
        encoders=dict(t.encoders or {}),
        value=t.value,
        val_metrics=_metrics(t.val_metrics),
        test_metrics=_metrics(t.test_metrics),
        n_params=t.n_params,
        latency_ms=t.latency_ms,
        train_time_s=t.train_time_s,
        duration_s=dur,
        epochs_run=t.epochs_run,
        worker=t.worker,
        device=t.device,
        started_at=_iso(t.started_at),
        finished_at=_iso(t.finished_at),
        cache_hits=t.cache_hits,
        cache_misses=t.cache_misses,
        has_checkpoint=t.number in checkpoints,
        last_value=last if finite(last) else None,
        stage=t.stage,
        low_fidelity=t.low_fidelity,
        # the trial's selection record (CV folds), once the history has one; None: validation
        selection=read_selection(getattr(t, "selection", None)),
    )


def _metrics(m: dict | None) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in (m or {}).items()
        if k != "train_loss" and isinstance(v, (int, float))
    }


def ranked(rows: list[Row], direction: str) -> list[Row]:
    """Completed trials, best first; ties keep the earlier trial first (as Optuna's best_trial)."""
    done = sorted((r for r in rows if r.status == "COMPLETE"), key=lambda r: r.number)
    return best_first(done, lambda r: r.value, direction)  # a stable sort: ties stay in order


def collect(
    study: str,
    *,
    storage: str,
    study_dir: Path,
    dataset: str | Path | None = None,
    workdir: str | Path | None = None,
    robustness: bool = True,
    device: str | None = None,
) -> ReportData:
    """Everything the report shows, as plain data.

    Args:
        study: study name.
        storage: SQLAlchemy URL of the study's database.
        study_dir: ``trials/<study>/`` (summary.json, checkpoints).
        dataset: the dataset folder (default: the path the study recorded), for the robustness test.
        workdir: the work directory (prepared-input and feature caches).
        robustness: evaluate the finalists (set False for a quick report without it).
        device: where to evaluate the finalists (default CUDA when available).
    """
    rec, records, source = load_history(study, storage)
    direction = rec.direction or "maximize"
    info = rec.dataset_info or {}
    metric = rec.metric or OBJECTIVES.get(info.get("task", "classification"), ("accuracy",))[0]
    try:
        st = _optuna_study(study, storage)
    except ConfigError:
        st = None
    # a study with an artifact store: checkpoints and summary.json come from there when this
    # host did not write them
    store = CheckpointStore(study_dir, study_artifacts(st.user_attrs) if st else None)
    checkpoints = store.finalists()
    rows = [_row(t, checkpoints, metric) for t in records]
    summary = _read_json(store.cached(study_dir / "summary.json"))
    annotate(rows, stage_attrs(st))
    for r in rows:  # a selection record from the Optuna user attributes (older history tables)
        r.selection = read_selection(r.selection)
    staged = is_staged(rows)
    winner = read_winner(st, summary) if staged else None

    counts = {"completed": 0, "pruned": 0, "failed": 0, "running": 0}
    pruned_reasons: dict[str, int] = {}
    failed = []
    for r, t in zip(rows, records, strict=True):
        key = {"COMPLETE": "completed", "PRUNED": "pruned", "FAIL": "failed"}.get(
            r.status, "running"
        )
        counts[key] += 1
        if r.status == "PRUNED":
            reason = r.reason or "pruned"
            pruned_reasons[reason] = pruned_reasons.get(reason, 0) + 1
        if r.status == "FAIL":
            failed.append({"trial": r.number, "reason": r.reason, "error": t.error})

    board = ranked(rows, direction)
    best = _best(board, rows, {t.number: t.spec for t in records}, winner, metric, staged)
    # a staged study's comparisons are the fusion search's (stage 2): its trials and baselines
    searched = [r for r in rows if stage_of(r) == FUSION] if staged else rows

    starts = [t.started_at for t in records if t.started_at]
    ends = [t.finished_at for t in records if t.finished_at]
    span = (max(ends) - min(starts)).total_seconds() if starts and ends else None
    space = rec.space or {}
    # the number of trials asked for (the lead records it in the study's search options;
    # databases written before it was called "trials" have "n_total")
    opts = (st.user_attrs.get("search_options") or {}) if st else {}
    budget = opts.get("trials") or opts.get("n_total") or space.get("trials")
    importances, imp_note = (
        _importances(st, searched) if st else ({}, "the Optuna study is missing")
    )
    data = ReportData(
        study=study,
        source=source,
        generated_at=dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        metric=metric,
        direction=direction,
        dataset=info,
        dataset_path=rec.dataset_path,
        space_name=space.get("name"),
        budget_trials=budget,
        wall_time_s=summary.get("wall_time_s"),
        span_s=span,
        counts=counts,
        pruned_reasons=pruned_reasons,
        failed=failed,
        trials=rows,
        leaderboard=_leaderboard(board, best, staged),
        best=best,
        groups=_groups(searched, ranked(searched, direction), direction),
        baselines=_baselines(searched, best, metric),
        importances=importances,
        importances_note=imp_note,
        pareto=_pareto(end_to_end(board) if staged else board, direction),
        robustness=None,
        robustness_note=None,
        cost=_cost(rows),
        stages=collect_stages(rows, winner, best, summary, metric, direction),
        selection=collect_selection(rows, best, staged, metric, direction),
    )
    if robustness:
        path = dataset or rec.dataset_path
        targets, ensemble = _finalists(board, rows, best, staged)
        if not board:
            data.robustness_note = "no trial completed"
        elif path is None:
            data.robustness_note = (
                "the study did not record its dataset folder; pass --dataset DIR "
                "to evaluate the finalists"
            )
        else:
            try:
                data.robustness = evaluate_finalists(
                    targets,
                    store,
                    path,
                    workdir=workdir,
                    metric=metric,
                    direction=direction,
                    fingerprint=rec.dataset_fingerprint,
                    device=device,
                    ensemble=ensemble,
                )
            except ConfigError as e:
                data.robustness_note = str(e)
    else:
        data.robustness_note = "robustness evaluation skipped"
    return data


def _best(
    board: list[Row],
    rows: list[Row],
    specs: dict[int, dict | None],
    winner: dict | None,
    metric: str,
    staged: bool,
) -> dict | None:
    """The best design: a staged study's winner (its single model or its ensemble), else the
    best completed trial (of a staged study without a winner: the best finalist, else the best
    fusion-search trial; never a stage-1 unimodal model)."""
    if winner is not None:
        best = winner_best(winner, rows, specs, metric)
        if best is not None:
            return _label_best(best, rows, winner)
        log.warning("the study's winner %s is not in its history; ignored", winner.get("trials"))
    pool = searched_board(board) if staged else board
    if not pool:
        return None
    b = pool[0]
    return {
        "kind": "trial",
        "trial": b.number,
        "spec": specs.get(b.number),
        "value": b.value,
        "val_metrics": b.val_metrics,
        "test_metrics": b.test_metrics,
        "n_params": b.n_params,
        "latency_ms": b.latency_ms,
        "baseline": b.baseline,
        "fusion": b.fusion,
        "point": b.point,
        "encoders": b.encoders,
        "stage": b.stage,
        "value_kind": value_kind(b),
        "folds": folds(b),
        "value_std": value_std(b),
    }


def _label_best(best: dict, rows: list[Row], winner: dict) -> dict:
    """What the winner's value is: an ensemble's validation figure is in-sample (the ensemble
    was chosen and weighted on the validation predictions it is scored on) unless the winner
    records how it was scored (a ``selection`` record, e.g. out-of-fold); a single model's is its
    trial's."""
    sel = read_selection(winner.get("selection"))
    if best["kind"] == "ensemble":
        if winner.get("val_kind") == "out-of-sample":  # weights fitted out of fold
            kind, k, std = VALIDATION, None, None
        elif sel is not None and sel["kind"] == CV:  # chosen on out-of-fold predictions
            kind, k, std = CV, sel["folds"], sel["std"]
        else:
            kind, k, std = IN_SAMPLE, None, None
    else:
        main = next(r for r in rows if r.number == best["trial"])
        kind, k, std = value_kind(main), folds(main), value_std(main)
    return {**best, "value_kind": kind, "folds": k, "value_std": std}


def _leaderboard(board: list[Row], best: dict | None, staged: bool) -> list[int]:
    """Completed trials best first; a staged study's best design (the winner's trials) first."""
    if not staged or best is None:
        return [r.number for r in board]
    done = {r.number for r in board}
    first = [n for n in best.get("trials") or [best["trial"]] if n in done]
    return first + [r.number for r in board if r.number not in first]


def _finalists(
    board: list[Row], rows: list[Row], best: dict | None, staged: bool
) -> tuple[list[Row], dict | None]:
    """The trials whose robustness is measured, and the ensemble to measure as a whole.

    A staged study's winner: its single model, or the ensemble's members (and the ensemble, when
    every member kept its checkpoint). Otherwise the top :data:`N_FINALISTS` with a checkpoint.
    """
    by_number = {r.number: r for r in rows}
    if staged and best is not None and best.get("members"):
        members = [by_number[n] for n in best["trials"]]
        kept = [r for r in members if r.has_checkpoint]
        if best["kind"] != "ensemble" or len(kept) < len(members):
            return kept, None
        ensemble = {
            "trials": best["trials"],
            "weights": best["weights"],
            "recorded_test": best["test_metrics"],
        }
        return kept, ensemble
    pool = searched_board(board) if staged else board
    return [r for r in pool if r.has_checkpoint][:N_FINALISTS], None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# ---- comparisons -----------------------------------------------------------------------------


def _groups(rows: list[Row], board: list[Row], direction: str) -> dict[str, list[dict]]:
    """Per family / method / fusion point / encoder choice: trials, best and spread of the scores."""
    keys = {
        "family": lambda r: [r.family],
        "method": lambda r: [r.fusion],
        "point": lambda r: [r.point],
        "encoder": lambda r: [f"{m}: {e}" for m, e in sorted(r.encoders.items())],
    }
    out: dict[str, list[dict]] = {}
    for kind, fn in keys.items():
        groups: dict[str, dict] = {}
        for r in rows:
            if r.family is None:
                continue
            for k in fn(r):
                g = groups.setdefault(
                    str(k),
                    {
                        "name": str(k),
                        "trials": 0,
                        "completed": 0,
                        "pruned": 0,
                        "failed": 0,
                        "values": [],
                        "best_trial": None,
                    },
                )
                g["trials"] += 1
                if r.status == "PRUNED":
                    g["pruned"] += 1
                elif r.status == "FAIL":
                    g["failed"] += 1
        for r in board:  # best first: the first completed trial seen is the group's best
            for k in fn(r):
                g = groups[str(k)]
                g["completed"] += 1
                g["values"].append(r.value)
                if g["best_trial"] is None:
                    g["best_trial"] = r.number
                    g["best"] = r.value
                    g["best_test"] = r.test_metrics
        rows_out = []
        for g in groups.values():
            v = g["values"]
            g["median"] = statistics.median(v) if v else None
            g["mean"] = statistics.fmean(v) if v else None
            g.setdefault("best", None)
            g.setdefault("best_test", {})
            rows_out.append(g)
        sign = sort_sign(direction)
        rows_out.sort(key=lambda g: (g["best"] is None, sign * (g["best"] or 0.0), g["name"]))
        out[kind] = rows_out
    return out


def _baselines(rows: list[Row], best: dict | None, metric: str) -> list[dict]:
    """Each enqueued baseline next to the best design (difference = best - baseline)."""
    if best is None:
        return []
    out = []
    for r in rows:
        if not r.baseline:
            continue
        d: dict[str, Any] = {
            "baseline": r.baseline,
            "trial": r.number,
            "status": r.status,
            "reason": r.reason,
            "fusion": r.fusion,
            "point": r.point,
            "val": None,
            "test": None,
            "val_diff": None,
            "test_diff": None,
            "n_params": r.n_params,
            "latency_ms": r.latency_ms,
        }
        if r.status == "COMPLETE" and finite(r.value):
            d["val"] = r.value
            d["test"] = r.test_metrics.get(metric)
            d["val_diff"] = best["value"] - r.value if finite(best["value"]) else None
            bt = best["test_metrics"].get(metric)
            d["test_diff"] = bt - d["test"] if finite(bt) and finite(d["test"]) else None
        out.append(d)
    return out


def _pareto(board: list[Row], direction: str) -> dict[str, list[int]]:
    """Trials on the front of (better metric, lower cost) for cost = parameters and latency."""
    out = {}
    for cost in ("n_params", "latency_ms"):
        pts = [(getattr(r, cost), r.value, r.number) for r in board if finite(getattr(r, cost))]
        front = []
        for c, v, n in pts:
            # dominated: another trial at most as costly and at least as good, and not the same
            dominated = any(
                c2 <= c and not better(v, v2, direction) and (c2 < c or v2 != v)
                for c2, v2, _ in pts
            )
            if not dominated:
                front.append(n)
        out[cost] = sorted(front, key=lambda n: next(c for c, _, m in pts if m == n))
    return out


def _importances(st: optuna.Study, rows: list[Row]) -> tuple[dict[str, float], str | None]:
    """fANOVA importances over the architecture choices and the shared hyperparameters.

    The space is conditional, so the branch parameters exist only in some trials; the importances
    are computed on what every completed trial has: the fusion method, the fusion point, each
    modality's encoder, and the parameters common to all of them (learning rate, ...).
    """
    by_number = {r.number: r for r in rows}
    done = [
        t
        for t in st.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if finite(t.value) and t.number in by_number
    ]
    if len(done) < 3:
        return {}, f"needs at least 3 completed trials (this study has {len(done)})"
    derived: dict[str, list] = {"fusion method": [], "fusion point": []}
    for t in done:
        r = by_number[t.number]
        derived["fusion method"].append(r.fusion)
        derived["fusion point"].append(str(r.point))
        for m, e in r.encoders.items():
            derived.setdefault(f"encoder {m}", []).append(e)

    def architectural(p: str) -> bool:  # shown through the derived choices above
        return p == "family" or p.endswith((".method", ".point", ".name", ".mode"))

    common = sorted(
        p
        for p in set.intersection(*(set(t.distributions) for t in done))
        if not architectural(p)
        and all(t.distributions[p] == done[0].distributions[p] for t in done)
    )
    params = {}
    for p in common:
        d = done[0].distributions[p]
        if d.single():  # one possible value: nothing to attribute
            continue
        params[p] = (d, [t.params[p] for t in done])
    for name, values in derived.items():
        if len(values) == len(done) and len(set(values)) > 1:
            choices = tuple(sorted(set(values)))
            params[name] = (CategoricalDistribution(choices), values)
    if not params:
        return {}, "no parameter varied across the completed trials"
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created in memory" line
    try:
        tmp = optuna.create_study(direction=st.direction)
        for i, t in enumerate(done):
            tmp.add_trial(
                optuna.trial.create_trial(
                    params={p: v[i] for p, (_, v) in params.items()},
                    distributions={p: d for p, (d, _) in params.items()},
                    value=t.value,
                )
            )
        imp = optuna.importance.get_param_importances(
            tmp, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
        )
    except (ValueError, RuntimeError) as e:
        return {}, f"could not compute importances ({e})"
    finally:
        optuna.logging.set_verbosity(verbosity)
    return {k: float(v) for k, v in imp.items()}, None


def _cost(rows: list[Row]) -> dict:
    """Time per trial, cache use and worker utilisation (busy time / active study time)."""
    intervals = sorted(
        (dt.datetime.fromisoformat(r.started_at), dt.datetime.fromisoformat(r.finished_at))
        for r in rows
        if r.started_at and r.finished_at
    )
    active = 0.0
    cur_s = cur_e = None
    for s, e in intervals:  # union of the trials' intervals: the time anything was running
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                active += (cur_e - cur_s).total_seconds()
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        active += (cur_e - cur_s).total_seconds()
    workers: dict[str, dict] = {}
    for r in rows:
        w = workers.setdefault(
            r.worker or "?",
            {
                "worker": r.worker or "?",
                "device": r.device,
                "trials": 0,
                "completed": 0,
                "busy_s": 0.0,
                "train_s": 0.0,
            },
        )
        w["trials"] += 1
        w["completed"] += r.status == "COMPLETE"
        w["busy_s"] += r.duration_s or 0.0
        w["train_s"] += r.train_time_s or 0.0
    for w in workers.values():
        w["utilisation"] = w["busy_s"] / active if active > 0 else None
    hits = [r.cache_hits for r in rows if r.cache_hits is not None]
    misses = [r.cache_misses for r in rows if r.cache_misses is not None]
    durations = [r.duration_s for r in rows if r.duration_s is not None]
    return {
        "active_s": active,
        "total_trial_s": sum(durations),
        "mean_trial_s": statistics.fmean(durations) if durations else None,
        "median_trial_s": statistics.median(durations) if durations else None,
        "cache_hits": sum(hits) if hits else None,
        "cache_misses": sum(misses) if misses else None,
        "workers": sorted(workers.values(), key=lambda w: w["worker"]),
    }
