"""Studies: create, resume or join a study (under the study lock), dispatch its workers, finish it.

``search()`` reads top to bottom::

    plan = prepare(...)      validate the dataset, the space and the options; open the storage;
                             create or resume the study; enqueue baselines and coverage trials
    dispatch(plan)           one worker in this process, or N worker processes
    finish(plan)             keep the finalists' checkpoints, export the best, summary.json,
                             close the MLflow parent run, write the report

No training happens here: a worker (:mod:`autofuse.workers`) runs trial executions
(:mod:`autofuse.trial`), which train candidates (:mod:`autofuse.runner`).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from autofuse import sharing
from autofuse._util import best_first
from autofuse.budget import StageBudget
from autofuse.checkpoints import KEEP_TOP_K, CheckpointStore
from autofuse.data import Dataset
from autofuse.errors import AutofuseError, ConfigError
from autofuse.export import export_trial
from autofuse.metrics import OBJECTIVES
from autofuse.mlflow_study import close_study_run, log_study_files, mlflow_links
from autofuse.options import SearchOptions
from autofuse.paths import Paths, check_study_name
from autofuse.report import write_report
from autofuse.samplers import make_pruner, make_sampler
from autofuse.space import SearchSpace, baseline_params, coverage_params, describe, load_space
from autofuse.stages import (
    FINALIST,
    FINALIST_PLAN,
    FUSION,
    UNIMODAL,
    enqueue_finalists,
    enqueue_unimodal,
    finished_in_stage,
    fusion_baselines,
    is_skipped,
    skip_queued,
    stage_of,
)
from autofuse.storage.artifacts import open_artifacts
from autofuse.storage.history import HistoryStore
from autofuse.storage.lock import StudyLock, holding
from autofuse.storage.mlflow import open_tracker
from autofuse.storage.sql import close_storage
from autofuse.summary import write_json, write_summary
from autofuse.train import TrainData
from autofuse.trial import TrialHook, reconcile_stale
from autofuse.tuning import enqueue_round
from autofuse.winner import choose_winner, export_winner
from autofuse.workers import (
    WorkerConfig,
    check_storage_for_workers,
    open_storage,
    plan_devices,
    run_worker,
    run_workers,
)

log = logging.getLogger(__name__)
TS = optuna.trial.TrialState


@dataclass
class SearchResult:
    study_name: str
    study_dir: Path
    summary: dict

    @property
    def best_dir(self) -> Path:
        return self.study_dir / "best"


@dataclass
class StudyPlan:
    """A study ready to run: what ``prepare`` resolved and opened."""

    name: str
    ds: Dataset
    space: SearchSpace
    options: SearchOptions  # storage, workdir and trials resolved
    paths: Paths
    devices: list[str]
    metric: str
    direction: str
    study: optuna.Study
    history: HistoryStore
    tracker: Any  # MlflowTracker | NullTracker
    #: the study's Optuna storage (closed with the plan)
    rdb: Any = None

    def close(self) -> None:
        """Close the plan's database connections (a notebook may run many searches)."""
        self.history.close()
        close_storage(self.rdb)

    @property
    def n_total(self) -> int:
        """Finished trials wanted (the fusion search's, in a staged search; unbounded when only
        a time budget bounds it)."""
        return int(self.options.trials or UNBOUNDED)

    @property
    def store(self) -> CheckpointStore:
        return CheckpointStore(
            self.paths.study_dir(self.name), open_artifacts(self.options.artifacts)
        )

    def runner_template(self) -> TrainData:
        """The dataset's targets and splits (no inputs)."""
        return TrainData.from_dataset(self.ds, inputs={})


def search(
    dataset: str | Path | Dataset,
    *,
    study: str,
    options: SearchOptions | None = None,
    hooks: list[TrialHook] | tuple[TrialHook, ...] = (),
    **changes: Any,
) -> SearchResult:
    """Run (or resume) a study until it holds ``options.trials`` finished trials, then export the
    best, write ``summary.json`` and the report.

    Args:
        dataset: a dataset folder or an :class:`autofuse.data.Dataset`.
        study: study name (also the output folder ``trials/<study>/``).
        options: the search settings (:class:`~autofuse.options.SearchOptions`; defaults there).
        hooks: trial hooks installed in every worker (e.g. fault injection in tests).
        changes: options given by name (``trials=30, sampler="random"``) on top of ``options``;
            ``space`` may also be a :class:`~autofuse.space.SearchSpace`.
    """
    space = changes.pop("space", None)
    if space is not None and not isinstance(space, SearchSpace):
        changes["space"] = os.fspath(space)
        space = None
    for k in ("workdir", "storage"):
        if isinstance(changes.get(k), os.PathLike):
            changes[k] = os.fspath(changes[k])
    opts = SearchOptions.parse(options, **changes)
    plan = prepare(dataset, study, opts, space)
    t0 = time.monotonic()
    try:
        try:
            dispatch(plan, tuple(hooks))
        except KeyboardInterrupt:
            interrupted(plan)
            raise
        return finish(plan, time.monotonic() - t0)
    finally:
        plan.close()


def interrupted(plan: StudyPlan) -> None:
    """Ctrl-C / SIGTERM stopped the search (each running trial logged one line): one summary line,
    and the MLflow parent run ends KILLED (resuming the study sets it running again)."""
    trials = plan.study.get_trials(deepcopy=False)
    done = sum(t.state in (TS.COMPLETE, TS.PRUNED) for t in trials)
    queued = sum(t.state == TS.WAITING and "retry_of" in t.user_attrs for t in trials)
    log.warning(
        "study %s stopped: %d trial(s) finished, %d interrupted trial(s) queued to resume; "
        "run the same command again to continue",
        plan.name,
        done,
        queued,
    )
    plan.tracker.end_study("KILLED")


def prepare(
    dataset: str | Path | Dataset, study: str, opts: SearchOptions, space: SearchSpace | None
) -> StudyPlan:
    """Check everything, then create or resume the study; nothing is written before the checks."""
    check_study_name(study)
    paths = Paths.resolve(opts.workdir)
    ds = dataset if isinstance(dataset, Dataset) else Dataset.load(dataset)  # validates first
    sp = space if space is not None else load_space(opts.space)
    if opts.baselines is not None:
        sp = sp.model_copy(update={"baselines": opts.baselines})
    for m in ds.modality_names:
        if not sp.encoder_choices(ds.modality_type(m)):
            raise ConfigError(
                f"search space {sp.name!r} has no encoder for modality {m!r} "
                f"({ds.modality_type(m)})"
            )
    timed = sp.stages.enabled and opts.time_budget is not None
    opts = SearchOptions.parse(
        opts,
        storage=opts.storage or paths.default_storage,
        workdir=str(paths.root),
        # a staged search with a time budget runs the fusion search until its share is spent
        trials=opts.trials or (None if timed else sp.trials),
    )
    devices = _devices(opts, study)
    check_storage_for_workers(str(opts.storage), len(devices))
    make_sampler(sp, opts.sampler, opts.seed)  # a bad --sampler / --pruner before any write
    make_pruner(sp, opts.pruner)
    artifacts = open_artifacts(opts.artifacts)
    if artifacts is not None:  # an unreachable store: one line now, not a warning per upload
        artifacts.check()
    metric, direction = OBJECTIVES[ds.task]
    history = HistoryStore(str(opts.storage))  # creates (once) or checks autofuse's tables
    # several processes starting this study at once: one creates it, the others join it
    rdb = open_storage(str(opts.storage), opts)
    sharing.check_stored(rdb, study, paths.study_dir(study), opts.artifacts)
    with holding(StudyLock(str(opts.storage), study)):
        st = _open_study(rdb, study, ds, sp, opts, direction, paths.study_dir(study))
        _record(st, history, ds, sp, opts, paths, space_file=opts.space, metric=metric)
        tracker = open_tracker(
            opts.mlflow_uri,
            paths.trials,
            study,
            {"dataset": ds.name, "fingerprint": ds.fingerprint()[:16]},
            {"autofuse.dataset": ds.name},
        )
        if tracker.available:
            history.upsert_study(
                study,
                mlflow_experiment_id=tracker.experiment_id,
                mlflow_parent_run_id=tracker.parent_run_id,
            )
    return StudyPlan(
        study, ds, sp, opts, paths, devices, metric, direction, st, history, tracker, rdb
    )


def _devices(opts: SearchOptions, study: str) -> list[str]:
    """One device per worker (``--device`` names the device of every worker when no
    ``--devices`` list is given)."""
    if opts.device and (opts.workers or 0) <= 1 and not (opts.devices or opts.workers_per_device):
        return [opts.device]
    return plan_devices(
        opts.workers,
        opts.devices or opts.device,
        opts.workers_per_device,
        study=study,
        storage=str(opts.storage),
    )


def open_study(
    name: str, ds: Dataset, sp: SearchSpace, opts: SearchOptions, direction: str
) -> optuna.Study:
    """Create the study (with its baselines) or resume it, under the study lock so that several
    processes starting at once end up in one study."""
    storage = open_storage(str(opts.storage), opts)
    study_dir = Paths.resolve(opts.workdir).study_dir(name)
    with holding(StudyLock(str(opts.storage), name)):
        return _open_study(storage, name, ds, sp, opts, direction, study_dir)


def _open_study(
    storage: Any,
    name: str,
    ds: Dataset,
    sp: SearchSpace,
    opts: SearchOptions,
    direction: str,
    study_dir: Path,
) -> optuna.Study:
    """``open_study`` on ``storage`` for a caller that holds the study lock. A process joining
    the study must reach its files (:mod:`autofuse.sharing`): checked before anything is
    written."""
    names = optuna.get_all_study_names(storage)
    if name in names:
        st = optuna.load_study(study_name=name, storage=storage)
        _check_resume(st, ds, sp, opts.force)
        sharing.join(st, study_dir, opts.artifacts)
        log.info("resuming study %s", name)
    else:
        st = optuna.create_study(study_name=name, storage=storage, direction=direction)
        sharing.claim(st, study_dir, opts.artifacts)
        st.set_user_attr("dataset_fingerprint", ds.fingerprint())
        st.set_user_attr("dataset", ds.info())
        st.set_user_attr("space", describe(sp))
        st.set_user_attr("metric", OBJECTIVES[ds.task][0])
        st.set_metric_names([f"val_{OBJECTIVES[ds.task][0]}"])  # the dashboard's axis label
        if not sp.stages.enabled:  # staged: enqueued when the fusion search opens
            for bname, params in baseline_params(sp, _modalities(ds)):
                st.enqueue_trial(params, user_attrs={"baseline": bname})
    if not sp.stages.enabled:
        _enqueue_coverage(st, sp, _modalities(ds), int(opts.trials or 0))
    return st


def _modalities(ds: Dataset) -> dict[str, str]:
    return {m: ds.modality_type(m) for m in ds.modality_names}


def _check_resume(st: optuna.Study, ds: Dataset, sp: SearchSpace, force: bool) -> None:
    """Refuse to resume a study on another dataset or search space (unless ``force``)."""
    attrs = st.user_attrs
    old = attrs.get("dataset_fingerprint")
    if old not in (None, ds.fingerprint()) and not force:
        raise ConfigError(
            f"study {st.study_name!r} was run on a different dataset (fingerprint "
            f"{old[:12]} != {ds.fingerprint()[:12]}); use another --study name or --force"
        )
    if attrs.get("space") is not None and not _same_space(attrs["space"], describe(sp)):
        if not force:
            raise ConfigError(
                f"study {st.study_name!r} was run with a different search space; "
                "use another --study name or --force"
            )


def _same_space(old, new) -> bool:
    """Whether a stored space description still describes ``new``: every setting recorded then
    must be the same now; settings a newer autofuse added (absent from ``old``) are ignored."""
    if isinstance(old, dict) and isinstance(new, dict):
        return all(k in new and _same_space(v, new[k]) for k, v in old.items())
    return old == new


def _enqueue_coverage(st: optuna.Study, sp: SearchSpace, modalities: dict, n_total: int) -> None:
    """Enqueue trials for families with fewer than ``sp.coverage`` trials (new or resumed study)."""
    trials = st.get_trials(deepcopy=False)
    existing = [
        {
            "family": t.user_attrs.get("family")
            or t.params.get("family")
            or (t.system_attrs.get("fixed_params") or {}).get("family")
        }
        for t in trials
    ]
    used = sum(t.state != optuna.trial.TrialState.FAIL for t in trials)
    for params in coverage_params(sp, modalities, existing, max(0, n_total - used)):
        st.enqueue_trial(params, user_attrs={"coverage": next(iter(params.values()))})


def _record(
    st: optuna.Study,
    history: HistoryStore,
    ds: Dataset,
    sp: SearchSpace,
    opts: SearchOptions,
    paths: Paths,
    space_file: str | None,
    metric: str,
) -> None:
    """What ``autofuse worker`` needs to join (study attributes), the SQL study record and the
    space next to the study's outputs."""
    dataset_path = str(ds.root.resolve()) if getattr(ds, "root", None) else None
    st.set_user_attr("dataset_path", dataset_path)
    st.set_user_attr("space_config", sp.model_dump(mode="json"))
    st.set_user_attr("search_options", opts.stored())
    history.upsert_study(
        st.study_name,
        dataset_fingerprint=ds.fingerprint(),
        dataset_info=ds.info(),
        dataset_path=dataset_path,
        space=describe(sp),
        metric=metric,
        direction=st.direction.name.lower(),
    )
    study_dir = paths.study_dir(st.study_name)
    study_dir.mkdir(parents=True, exist_ok=True)
    write_json(study_dir / "space.json", describe(sp))
    if space_file and Path(space_file).is_file():
        shutil.copyfile(space_file, study_dir / "space.yaml")


def dispatch(plan: StudyPlan, hooks: tuple[TrialHook, ...] = ()) -> None:
    """Run the search: one stage, or the three stages of a staged search in turn.

    Under ``--time-budget`` each stage ends at its point of the search's clock
    (:class:`~autofuse.budget.StageBudget`): what a stage leaves unused passes to the next."""
    if not plan.space.stages.enabled:
        run_stage(plan, hooks, None, plan.n_total)
        return
    st, sp, cfg = plan.study, plan.space, plan.space.stages
    budget = StageBudget(plan.options.time_budget, stage_shares(cfg.budget))
    n1 = _locked(plan, enqueue_unimodal, st, sp, _modalities(plan.ds))
    run_stage(plan, hooks, UNIMODAL, n1, **budget.shared(UNIMODAL, n1))
    if not any(stage_of(t) == FUSION for t in st.get_trials(deepcopy=False)):
        tune_unimodal(plan, hooks, budget)
    if not any(stage_of(t) == FINALIST for t in st.get_trials(deepcopy=False)):
        _locked(plan, open_fusion_search, plan)
        end = budget.end(FUSION)
        # no trial runs past the fusion stage's end (one started late ends low-fidelity)
        run_stage(plan, hooks, FUSION, plan.n_total, deadline=end, budget_end=end)
    while cfg.finalists:  # rounds: time a round leaves over buys more seeds or designs
        n3 = _locked(plan, open_finalists, plan, budget.left(FINALIST))
        if not n3:
            break
        target = finished_in_stage(st, FINALIST) + n3
        run_stage(plan, hooks, FINALIST, target, **budget.shared(FINALIST, n3))


def tune_unimodal(plan: StudyPlan, hooks: tuple[TrialHook, ...], budget: StageBudget) -> None:
    """Stage 1's tuning rounds (:mod:`autofuse.tuning`) while its share of ``--time-budget``
    has time left; without a budget, or with ``stages.tune: 0``, none. Why it ended goes to the
    log and the study attribute ``unimodal_tuning``."""
    if budget.total_s is None or plan.space.stages.tune < 1:
        return
    st, rounds = plan.study, 0
    while True:
        left = budget.left(UNIMODAL) or 0.0
        queued, why = _locked(plan, enqueue_round, st, plan.space, _modalities(plan.ds), left)
        if not queued:
            break
        rounds += 1
        target = finished_in_stage(st, UNIMODAL) + queued
        run_stage(plan, hooks, UNIMODAL, target, budget_end=budget.end(UNIMODAL))
    log.info("stage 1: tuning ended after %d round(s): %s", rounds, why)
    _locked(plan, st.set_user_attr, "unimodal_tuning", {"rounds": rounds, "ended": why})


def stage_shares(split: Any) -> list[tuple[str, float]]:
    """``stages.budget`` as the ordered (stage, share) pairs :class:`StageBudget` takes."""
    return [(UNIMODAL, split.unimodal), (FUSION, split.fusion), (FINALIST, split.finalists)]


#: "no trial count": a fusion search bounded by its time budget only
UNBOUNDED = 1_000_000


def _locked(plan: StudyPlan, fn: Any, *args: Any) -> Any:
    """Run ``fn`` under the study lock (what several coordinators must do once)."""
    with holding(StudyLock(str(plan.options.storage), plan.name)):
        return fn(*args)


def open_fusion_search(plan: StudyPlan) -> None:
    """Stage 2 opens: its baselines (each with the best stage-1 encoders) and coverage trials,
    no more than the stage's trials left (what is queued beyond its target would run later,
    in stage 3)."""
    st, sp = plan.study, plan.space

    def fusion_trials() -> list:
        return [
            t for t in st.get_trials(deepcopy=False) if stage_of(t) == FUSION and not is_skipped(t)
        ]

    def room() -> int:
        used = sum(t.state != TS.FAIL for t in fusion_trials())
        return max(0, min(plan.n_total, UNBOUNDED - 1) - used)

    fusion_baselines(st, sp, baseline_params(sp, _modalities(plan.ds)), room())
    existing = [
        {
            "family": t.user_attrs.get("family")
            or t.params.get("family")
            or (t.system_attrs.get("fixed_params") or {}).get("family")
        }
        for t in fusion_trials()
    ]
    for params in coverage_params(sp, _modalities(plan.ds), existing, room()):
        st.enqueue_trial(
            params, user_attrs={"coverage": next(iter(params.values())), "stage": FUSION}
        )


def open_finalists(plan: StudyPlan, left_s: float | None) -> int:
    """A round of stage 3: fusion trials still queued are skipped (the fusion search has ended),
    finalists are queued as ``left_s`` seconds fit (none in the first round: the stage is skipped,
    and says so); returns how many finalist trials are queued (0: the stage is over)."""
    skip_queued(plan.study, FUSION, "the fusion search had ended")
    rows = {"fusion_rows": plan.space.stages.fusion_rows}  # what design_cost scales by
    first = FINALIST_PLAN not in plan.study.user_attrs
    n = enqueue_finalists(plan.study, plan.space, left_s, rows)
    note = plan.study.user_attrs[FINALIST_PLAN]
    if first and note.get("skipped"):
        log.warning("%s", note["note"])
    elif first:
        log.info("stage 3: %s", note["note"])
    elif n:
        log.info(
            "stage 3, round %d: %d more finalist trial(s) fit the time left", note["rounds"], n
        )
    return n


def run_stage(
    plan: StudyPlan,
    hooks: tuple[TrialHook, ...],
    stage: str | None,
    target: int,
    *,
    deadline: float | None = None,
    budget_end: float | None = None,
    min_trial_s: float = 0.0,
) -> None:
    """Run the workers on one stage: one in this process, or one process per planned device."""
    opts = plan.options
    _locked(
        plan,
        plan.study.set_user_attr,
        "stage_plan",
        {"stage": stage, "target": target, "deadline": deadline, "budget_end": budget_end},
    )
    base = WorkerConfig(
        study=plan.name,
        dataset=str(getattr(plan.ds, "root", "")),
        space=plan.space.model_dump(mode="json"),
        options=opts,
        n_total=target,
        device=plan.devices[0],
        hooks=hooks,
        stage=stage,
        deadline=deadline,
        budget_end=budget_end,
        min_trial_s=min_trial_s,
    )
    if len(plan.devices) == 1:
        run_worker(base, ds=plan.ds, progress=plan.options.progress)
        return
    cpu = plan.devices[0] == "cpu"
    threads = max(1, (os.cpu_count() or 1) // len(plan.devices)) if cpu else None
    cfgs = [
        WorkerConfig(**{**base.__dict__, "device": d, "rank": r, "threads": threads})
        for r, d in enumerate(plan.devices)
    ]
    run_workers(cfgs, plan.options.progress, plan.metric)


def finish(plan: StudyPlan, wall_time_s: float) -> SearchResult:
    """Keep the top checkpoints, export the best, write the summary, close MLflow, report.

    Under the study lock: several searches of one study finish one after the other (the same
    checkpoints kept, the best model registered once); first the trial records are brought in
    line with Optuna (a worker that died late). The report and the leaderboard then go to the
    MLflow parent run too, and ``summary.json`` gets the study's MLflow links."""
    storage, workdir = str(plan.options.storage), str(plan.paths.root)
    with holding(StudyLock(storage, plan.name)):
        reconcile_stale(plan.study, plan.history, plan.tracker)
        summary = _conclude(plan, wall_time_s)
        close_study_run(plan.tracker, summary, plan.name, workdir=workdir, storage=storage)
    store = plan.store
    if plan.options.refit_full and summary.get("best_trial") is not None:
        summary["refit_full"] = refit_full(plan)
        write_json(store.study_dir / "summary.json", summary)  # the report reads it
    if plan.options.report:
        try:
            out = write_report(plan.name, workdir=workdir, storage=plan.options.storage)
            summary["report"] = {k: str(v) for k, v in (out or {}).items()}
        except Exception as e:  # a report problem must not lose a finished search
            log.warning("report not written: %s", e)
    _finish_tracker(plan, summary)
    if plan.options.report or summary.get("mlflow") or summary.get("refit_full"):
        write_json(store.study_dir / "summary.json", summary)
    return SearchResult(plan.name, store.study_dir, summary)


def refit_full(plan: StudyPlan) -> dict[str, Any]:
    """``--refit-full``: the winner (each member of an ensemble) retrained on train + val for
    the epoch counts selection found, exported to ``trials/<study>/best_refit``; its test metrics
    (a refit has no validation rows left). A failure is reported, not raised: the search's own
    result stands."""
    out = plan.store.study_dir / "best_refit"
    try:
        res = export_trial(
            plan.name,
            out,
            workdir=str(plan.paths.root),
            storage=str(plan.options.storage),
            dataset=str(getattr(plan.ds, "root", "")) or None,
            device=plan.options.device,
            refit_full=True,
        )
    except AutofuseError as e:
        log.warning("--refit-full: the refit failed: %s", e)
        return {"dir": None, "error": str(e)}
    trials = list(res.members) if res.members else [res.trial]
    return {"dir": str(res.out), "trials": trials, "test": res.metrics.get("test") or {}}


def _finish_tracker(plan: StudyPlan, summary: dict) -> None:
    """The report and the leaderboard as artifacts of the MLflow parent run (replacing an earlier
    finish's), and the study's MLflow links in ``summary``."""
    if not plan.tracker.available:
        return
    storage, workdir = str(plan.options.storage), str(plan.paths.root)
    html = (summary.get("report") or {}).get("html")
    with holding(StudyLock(storage, plan.name)):
        log_study_files(plan.tracker, plan.name, html, workdir=workdir, storage=storage)
    links = mlflow_links(plan.tracker, summary)
    if links:
        summary["mlflow"] = links


def _conclude(plan: StudyPlan, wall_time_s: float) -> dict:
    """The finalists' checkpoints kept, the winner exported, ``summary.json`` written."""
    st, store = plan.study, plan.store
    done = st.get_trials(deepcopy=False, states=(TS.COMPLETE,))
    searched = [t for t in done if stage_of(t) == FUSION]
    keep = {t.number for t in best_first(searched, lambda t: t.value, plan.direction)[:KEEP_TOP_K]}
    finalists = [t for t in st.get_trials(deepcopy=False) if stage_of(t) == FINALIST]
    keep |= {t.number for t in done if stage_of(t) == FINALIST}
    keep |= {int(t.user_attrs["finalist_of"]) for t in finalists}  # their out-of-fold outputs
    store.prune(keep)
    winner = None
    if plan.space.stages.enabled:
        t = plan.runner_template()
        found = choose_winner(
            st, store, plan.ds.task, t.y_raw, t.splits, plan.metric, plan.space.stages.ensemble
        )
        if found is not None:
            meta = {"study": plan.name, "metric": plan.metric, "direction": plan.direction}
            meta["metrics"] = {"val": {plan.metric: found.val}, "test": found.test}
            failed = None
            try:
                export_winner(store, found, meta)
            except ConfigError as e:  # a damaged checkpoint must not lose the search's results
                log.warning("the winner was not exported to %s: %s", store.best_dir, e)
                found.why += f"; not exported ({e})"
                failed = {"exported": False}  # best/ is not this winner (summary: no best_dir)
            winner = {**found.to_dict(), **(failed or {})}
            st.set_user_attr("winner", winner)
    return write_summary(
        st, store, plan.ds.info(), plan.metric, plan.direction, wall_time_s, winner
    )


__all__ = ["SearchResult", "StudyPlan", "dispatch", "finish", "open_study", "prepare", "search"]
