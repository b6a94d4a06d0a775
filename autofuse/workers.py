"""Workers: the loop that trains candidates of one study, in this process or in N processes.

A worker loads the study from the shared storage and runs ``study.optimize`` until the study
holds the requested number of finished trials. Several workers (processes here, or other
machines through ``autofuse worker``) share one study through its SQL storage: Optuna hands each
of them different trials, heartbeats mark the trials of a dead worker for retry, and every worker
seeds its sampler differently (base seed + rank) so they do not repeat each other.

Device assignment (Optuna leaves it to the user): ``--workers-per-device K`` (or a device
repeated in ``--devices``) runs K workers on one GPU, each limited to its share of the device's
memory (``torch.cuda.set_per_process_memory_fraction``), so one runaway trial cannot starve the
others. By default, K per visible GPU is what its memory holds by the study's measured peak memory
per trial (:func:`workers_per_device`; 1 for a study without history). On CPU, N processes with
the torch thread count split between them.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import math
import multiprocessing as mp
import os
import signal
import statistics
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from autofuse import sharing
from autofuse._util import mask_url
from autofuse.checkpoints import CheckpointStore
from autofuse.data import Dataset
from autofuse.errors import AutofuseError, ConfigError
from autofuse.metrics import OBJECTIVES
from autofuse.options import SearchOptions
from autofuse.paths import Paths
from autofuse.runner import CandidateRunner, default_device
from autofuse.samplers import make_pruner, make_sampler
from autofuse.space import SearchSpace
from autofuse.stages import STAGES, Stages, is_queued_stage, skip_queued, stage_of
from autofuse.storage import make_storage
from autofuse.storage.artifacts import open_artifacts
from autofuse.storage.history import HistoryStore, ProxyHistory
from autofuse.storage.lock import StudyLock
from autofuse.storage.mlflow import open_tracker
from autofuse.storage.proxy import beating, is_grpc
from autofuse.trial import TrialExecution, TrialHook, WorkerContext, reconcile_stale

log = logging.getLogger(__name__)

#: SQLite is not safe for many concurrent writers: warn above 1 worker, refuse above this
MAX_SQLITE_WORKERS = 4
#: reasons that count as a fault for the consecutive-fault stop (a trial that reached its time
#: limit is not one: it ends with its best epoch so far, or as pruned before its first epoch)
FAULT_REASONS = ("oom", "diverged", "invalid", "error")
#: the share of a GPU's memory the workers on it may use together (the rest: CUDA contexts,
#: fragmentation)
SHARED_MEMORY_FRACTION = 0.95
#: at most this many workers per GPU by default
MAX_WORKERS_PER_DEVICE = 8


@dataclass
class WorkerConfig:
    """Everything one worker process needs (picklable; also rebuilt from the study by
    ``autofuse worker``). ``options.storage`` and ``options.workdir`` are resolved."""

    study: str
    dataset: str
    space: dict
    options: SearchOptions
    n_total: int
    device: str = "cpu"
    rank: int = 0
    threads: int | None = None
    #: trial hooks (picklable :class:`~autofuse.trial.TrialHook` instances), e.g. fault injection
    hooks: tuple[TrialHook, ...] = ()
    #: the stage this worker runs (staged search), and the wall-clock time (``time.time()``)
    #: after which it starts no new trial
    stage: str | None = None
    deadline: float | None = None
    #: a stage whose trials share a time budget: its end (``time.time()``) and the least time a
    #: trial gets (see :meth:`autofuse.trial.TrialExecution.deadline`)
    budget_end: float | None = None
    min_trial_s: float = 0.0
    #: how many workers share this worker's device (set by :func:`run_workers`); above 1 on a
    #: CUDA device, each limits itself to its share of the device's memory
    device_share: int = 1

    @property
    def storage(self) -> str:
        return str(self.options.storage)


class WorkerStopped(AutofuseError):
    """A worker gave up after too many consecutive faulty trials."""


def open_storage(url: str, options: SearchOptions):
    """The study's Optuna storage with heartbeats: a trial whose worker stops beating for
    ``options.grace`` seconds is failed and retried (``options.max_retry`` times)."""
    # heartbeat + retry are flagged experimental by Optuna; they are what makes resume work
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return make_storage(
        url,
        heartbeat_interval=options.heartbeat_interval,
        grace_period=options.grace,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=options.max_retry
        ),
    )


class QuietOptunaFailures(logging.Filter):
    """Optuna logs a failed trial with its full traceback. A trial stopped by Ctrl-C / SIGTERM is
    not a failure worth one (:meth:`TrialExecution.interrupted` logs one line): dropped. An error
    whose traceback the trial already logged (:func:`autofuse.trial.mark_logged`) keeps Optuna's
    one-line message without a second copy of it."""

    def __init__(self) -> None:
        super().__init__()
        self._dropped: set[str] = set()  # "Trial <n> ": its second line ("failed with value") too

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        msg = str(record.msg)
        if isinstance(exc, KeyboardInterrupt):
            self._dropped.add(msg.split("failed", 1)[0])
            return False
        if "failed with value" in msg and msg.split("failed", 1)[0] in self._dropped:
            return False
        if exc is not None and getattr(exc, "__autofuse_logged__", False):
            record.exc_info = None
        return True


#: the Optuna logger that reports failed trials (``optuna.study._optimize``)
OPTUNA_TRIAL_LOGGER = "optuna.study._optimize"


@contextlib.contextmanager
def quiet_optuna_failures():
    """Install :class:`QuietOptunaFailures` on Optuna's trial logger for the block."""
    logger, f = logging.getLogger(OPTUNA_TRIAL_LOGGER), QuietOptunaFailures()
    logger.addFilter(f)
    try:
        yield
    finally:
        logger.removeFilter(f)


@contextlib.contextmanager
def interrupt_on_signals():
    """Ctrl-C and SIGTERM (Slurm / Kubernetes stop a job with it) raise KeyboardInterrupt, so the
    running trial is queued to resume instead of being left RUNNING; restores the old handlers.
    Optuna's traceback of the stopped trial is not logged (:class:`QuietOptunaFailures`).

    SIGINT is reset too: a process started in the background of a non-interactive shell inherits
    SIGINT as ignored."""
    if threading.current_thread() is not threading.main_thread():
        with quiet_optuna_failures():
            yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        with quiet_optuna_failures():
            yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


class FaultCounter:
    """Optuna callback counting consecutive faulty trials (any FAIL, or pruned for a fault)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.n, self.last = limit, 0, ""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        reason = trial.user_attrs.get("reason")
        if trial.state == optuna.trial.TrialState.FAIL or reason in FAULT_REASONS:
            self.n += 1
            self.last = reason or "failed"
        else:
            self.n = 0

    def tripped(self) -> bool:
        return self.n >= self.limit


def limit_device_memory(device: str, share: int) -> float | None:
    """A CUDA device shared by ``share`` workers: cap this process at ``0.95 / share`` of its
    memory (an allocation beyond it raises ``torch.OutOfMemoryError`` in this process only, so a
    runaway trial ends as ``oom`` and the other workers go on). Returns the fraction set, or
    None (the CPU, or a device of its own)."""
    dev = torch.device(device)
    if dev.type != "cuda" or share <= 1:
        return None
    fraction = SHARED_MEMORY_FRACTION / share
    torch.cuda.set_per_process_memory_fraction(fraction, dev)
    return fraction


def worker_context(cfg: WorkerConfig, ds: Any = None) -> WorkerContext:
    """Load the study and everything its trials share in this process."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    fraction = limit_device_memory(cfg.device, cfg.device_share)
    if fraction is not None:
        log.info("worker %d: at most %.0f%% of %s's memory", cfg.rank, 100 * fraction, cfg.device)
    ds = ds if ds is not None else Dataset.load(cfg.dataset)
    sp = SearchSpace.model_validate(cfg.space)
    opts = cfg.options
    paths = Paths.resolve(opts.workdir)
    rdb = open_storage(cfg.storage, opts)
    st = optuna.load_study(
        study_name=cfg.study,
        storage=rdb,
        sampler=make_sampler(sp, opts.sampler, opts.seed + cfg.rank),
        pruner=make_pruner(sp, opts.pruner),
    )
    metric, direction = OBJECTIVES[ds.task]
    artifacts = open_artifacts(opts.artifacts)
    runner = CandidateRunner(ds, paths.cache, torch.device(cfg.device), artifacts=artifacts)
    store = CheckpointStore(paths.study_dir(cfg.study), artifacts)
    return WorkerContext(
        study=st,
        ds=ds,
        space=sp,
        options=opts,
        runner=runner,
        history=ProxyHistory(rdb) if is_grpc(cfg.storage) else HistoryStore(cfg.storage),
        tracker=open_tracker(opts.mlflow_uri, paths.trials, cfg.study),
        store=store,
        metric=metric,
        direction=direction,
        stages=Stages(st, sp, runner, store),
        hooks=list(cfg.hooks),
        budget_end=cfg.budget_end,
        stage_target=cfg.n_total,
        min_trial_s=cfg.min_trial_s,
        rdb=rdb,
    )


def run_worker(cfg: WorkerConfig, ds: Any = None, progress: bool = False) -> None:
    """Train trials of ``cfg.study`` until it holds ``cfg.n_total`` finished trials."""
    ctx = worker_context(cfg, ds)
    faults = FaultCounter(cfg.options.max_faults)
    try:
        # a worker killed earlier left RUNNING trials: fail them now (Optuna retries them; under
        # the study lock, like every count of the trials, see optimize_until), and bring the
        # records in line with Optuna's states
        with contextlib.closing(StudyLock(cfg.storage, cfg.study)) as lock, lock:
            optuna.storages.fail_stale_trials(ctx.study)
        reconcile_stale(ctx.study, ctx.history, ctx.tracker)

        def objective(trial: optuna.Trial) -> float:
            if not is_grpc(cfg.storage):  # Optuna's RDB heartbeat runs around the objective
                return TrialExecution(ctx, trial).run()
            # no heartbeat crosses the proxy: this worker stamps its trial, the proxy reaps
            with beating(ctx.rdb, trial._trial_id, cfg.options.heartbeat_interval):
                return TrialExecution(ctx, trial).run()

        with interrupt_on_signals():
            optimize_until(
                ctx.study,
                objective,
                cfg.n_total,
                ctx.metric,
                progress,
                extra_callbacks=[faults],
                should_stop=lambda: faults.tripped() or ctx.stopped is not None,
                storage_url=cfg.storage,
                stage=cfg.stage,
                deadline=cfg.deadline,
            )
    finally:
        ctx.close()
    if ctx.stopped is not None:
        raise ctx.stopped
    if faults.tripped():
        raise WorkerStopped(
            f"worker {ctx.worker} stopped after {faults.n} consecutive faulty trials "
            f"(last reason: {faults.last}); see `autofuse leaderboard --study "
            f"{cfg.study}` and the trials' reasons"
        )


def join_stages(cfg: WorkerConfig, progress: bool = False, wait_s: float = 120.0) -> None:
    """``autofuse worker`` on a staged study: follow the coordinator (the ``autofuse search``
    process) from stage to stage. It announces each stage in the study attribute ``stage_plan``
    (stage, trial target, deadline); this worker runs trials of that stage until its target or
    deadline, then waits up to ``wait_s`` seconds for the next stage, and stops when the study
    has its winner."""
    st = optuna.load_study(study_name=cfg.study, storage=make_storage(cfg.storage))
    done: set[str | None] = set()
    idle = time.monotonic()
    while "winner" not in st.user_attrs and time.monotonic() - idle < wait_s:
        plan = st.user_attrs.get("stage_plan") or {}
        if not plan or plan.get("stage") in done:
            time.sleep(2.0)
            continue
        run_worker(
            dataclasses.replace(
                cfg,
                stage=plan["stage"],
                n_total=int(plan["target"]),
                deadline=plan.get("deadline"),
                budget_end=plan.get("budget_end"),
            ),
            progress=progress,
        )
        done.add(plan["stage"])
        idle = time.monotonic()


def optimize_until(
    st,
    objective,
    n_total: int,
    metric: str,
    progress: bool,
    extra_callbacks=(),
    should_stop=lambda: False,
    storage_url: str | None = None,
    stage: str | None = None,
    deadline: float | None = None,
) -> None:
    """Run trials one ``study.optimize(n_trials=1)`` at a time until the study holds ``n_total``
    finished trials (of ``stage``, when given) or the wall clock passes ``deadline``
    (``time.time()``; the running trial finishes).

    A stage whose trials are all queued up front (stage 1, stage 3: :func:`is_queued_stage`)
    ends when none of its trials is queued or running: its worker never samples a trial of its
    own (Optuna would, once the queue is empty), so a finalist that failed and was dropped cannot
    make the stage run fusion trials forever. Trials still queued for an earlier stage are
    skipped (:func:`autofuse.stages.skip_queued`).

    Optuna's ``MaxTrialsCallback`` stops a worker only after its own trial ends, so N workers
    overshoot by up to N - 1 trials. Here a worker starts a trial only while finished + running
    trials are below the target; when the rest are running elsewhere it waits, failing stale
    trials (their worker died) so that their retries get picked up. With ``storage_url`` the check
    and the creation of the trial happen under a cross-process study lock (released as soon as
    the new trial is RUNNING), so concurrent workers never start one trial too many.
    """
    lock = StudyLock(storage_url, st.study_name) if storage_url else contextlib.nullcontext()

    def locked_objective(trial):
        if storage_url:
            lock.release()  # this trial is RUNNING now, other workers count it
        return objective(trial)

    callbacks = list(extra_callbacks)
    queued_only = is_queued_stage(stage)
    bar_cm = StudyProgress(st, n_total, metric, stage) if progress else contextlib.nullcontext()
    try:
        with bar_cm as bar:
            while not should_stop() and (deadline is None or time.time() < deadline):
                with lock:
                    # one snapshot: with two reads a trial finishing in between counts as neither
                    trials = st.get_trials(deepcopy=False)
                    _skip_ended_stages(st, trials, stage)
                    states = [t.state for t in trials if stage is None or stage_of(t) == stage]
                    done = states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED)
                    running = states.count(TrialState.RUNNING)
                    if done >= n_total:
                        break
                    if queued_only and TrialState.WAITING not in states:
                        if not running:  # every queued trial of the stage has ended
                            break
                    elif done + running < n_total:
                        st.optimize(
                            locked_objective, n_trials=1, callbacks=callbacks, catch=(Exception,)
                        )
                        if bar is not None:
                            bar.update()
                        continue
                    # the rest are running elsewhere: fail the stale ones (a dead worker's), then
                    # wait. Under the lock: Optuna fails a stale trial, then queues its retry, and
                    # a worker counting in between would start a fresh trial instead of the retry
                    optuna.storages.fail_stale_trials(st)
                time.sleep(1.0)
    finally:
        if storage_url:
            lock.close()


def _skip_ended_stages(st: optuna.Study, trials: list, stage: str | None) -> None:
    """Trials still queued for a stage before ``stage`` (a retry Optuna queued for a dead
    worker's trial, a copy of an interrupted one) never run: their stage is over, and Optuna
    would hand them to this stage's worker first."""
    if stage not in STAGES:
        return
    ended = set(STAGES[: STAGES.index(stage)])
    for s in {stage_of(t) for t in trials if t.state == TrialState.WAITING} & ended:
        skip_queued(st, s, f"queued after the {s} stage ended")


def _states(st: optuna.Study, stage: str | None) -> list[TrialState]:
    return [t.state for t in st.get_trials(deepcopy=False) if stage is None or stage_of(t) == stage]


def finished_count(st: optuna.Study, stage: str | None = None) -> int:
    states = _states(st, stage)
    return states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED)


class StudyProgress:
    """A rich progress bar over the study's finished trials, current best and elapsed time."""

    def __init__(self, st, n_total: int, metric: str, stage: str | None = None) -> None:
        self.st, self.metric, self.stage = st, metric, stage
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[best]}"),
        )
        self.task = self.bar.add_task(
            f"study {st.study_name}" + (f" ({stage})" if stage else ""),
            total=None if n_total >= 1_000_000 else n_total,  # a budget, not a count (study)
            completed=finished_count(st, stage),
            best="",
        )

    def __enter__(self) -> StudyProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.update()
        self.bar.__exit__(*exc)

    def update(self, extra: str = "") -> None:
        try:
            b = self.st.best_trial
            best = f"best {self.metric}={b.value:.4f} (trial {b.number})"
        except ValueError:
            best = ""
        self.bar.update(
            self.task,
            completed=finished_count(self.st, self.stage),
            best=f"{best} {extra}".strip(),
        )


# ---- several worker processes ------------------------------------------------------------------


def workers_per_device(
    total_mb: float, peak_mb: Sequence[float], cap: int = MAX_WORKERS_PER_DEVICE
) -> int:
    """How many trials one GPU of ``total_mb`` MiB runs at once, by the peak memory of the
    study's trials so far: ``floor(0.8 * total / (1.5 * median peak))`` (headroom for the CUDA
    contexts and for trials larger than the median), at least 1, at most ``cap``; 1 without
    history."""
    peaks = [float(p) for p in peak_mb if p is not None and math.isfinite(p) and p > 0]
    if not peaks or total_mb <= 0:
        return 1
    k = math.floor(0.8 * total_mb / (1.5 * statistics.median(peaks)))
    return max(1, min(int(cap), k))


def study_peaks(storage: str, study: str) -> list[float]:
    """Peak GPU memory (MiB) of the completed trials of ``study`` (empty for a new study)."""
    if is_grpc(storage):  # behind the storage proxy: the records are the trials' attributes
        proxy = make_storage(storage)
        try:
            recs = ProxyHistory(proxy).trials(study)
        finally:
            proxy.close()
        return [r.peak_gpu_mb for r in recs if r.status == "COMPLETE" and r.peak_gpu_mb]
    try:
        recs = HistoryStore(storage, create=False).trials(study)
    except ConfigError:  # no autofuse tables yet (a new database) or an old schema: no history
        return []
    return [r.peak_gpu_mb for r in recs if r.status == "COMPLETE" and r.peak_gpu_mb]


def plan_devices(
    workers: int | None,
    devices: str | None,
    per_device: int | None = None,
    *,
    study: str | None = None,
    storage: str | None = None,
) -> list[str]:
    """One device string per worker.

    ``devices`` (``cuda:0,cuda:1`` / ``cpu``; a device named twice runs two workers) is repeated
    ``per_device`` times and cycled over ``workers``. Without it: with ``workers``, that many
    spread over the visible GPUs; else ``per_device`` workers per GPU, by default as many as
    the study's measured peak memory per trial fits (:func:`workers_per_device`, from the
    history of ``study`` in ``storage``; at most 4 in all on SQLite); on a machine without a
    GPU, ``workers`` (or ``per_device``) CPU processes.
    """
    if devices:
        devs = [d.strip() for d in devices.split(",") if d.strip()]
        bad = [d for d in devs if not (d == "cpu" or d == "cuda" or d.startswith("cuda:"))]
        if bad:
            raise ConfigError(f"--devices: {bad} are not device names (cpu, cuda, cuda:N)")
        if any(d.startswith("cuda") for d in devs) and not torch.cuda.is_available():
            raise ConfigError("--devices names a CUDA device but no GPU is visible")
        n = workers or len(devs) * (per_device or 1)
        return [devs[i % len(devs)] for i in range(n)]
    if torch.cuda.is_available():
        n_gpu = torch.cuda.device_count()
        if workers:
            return [f"cuda:{i % n_gpu}" for i in range(workers)]
        k = per_device or _default_per_device(n_gpu, study, storage)
        return [f"cuda:{i % n_gpu}" for i in range(n_gpu * k)]
    return ["cpu"] * (workers or per_device or 1)


def _default_per_device(n_gpu: int, study: str | None, storage: str | None) -> int:
    """Workers per GPU when nothing says: what the smallest visible GPU holds."""
    if not study or not storage:
        return 1
    peaks = study_peaks(storage, study)
    if not peaks:
        return 1
    cap = MAX_WORKERS_PER_DEVICE
    if storage.startswith("sqlite"):
        cap = max(1, min(cap, MAX_SQLITE_WORKERS // n_gpu))
    total = min(torch.cuda.get_device_properties(i).total_memory for i in range(n_gpu)) / 2**20
    k = workers_per_device(total, peaks, cap)
    if k > 1:
        log.info(
            "%d workers per GPU (%.0f MiB each, median trial peak %.0f MiB)",
            k,
            total,
            statistics.median(peaks),
        )
    return k


def device_shares(devices: Sequence[str]) -> list[int]:
    """For each worker's device, how many workers use it (``cuda`` is ``cuda:0``)."""

    def key(d: str) -> str:
        return "cuda:0" if d == "cuda" else d

    counts = collections.Counter(key(d) for d in devices)
    return [counts[key(d)] for d in devices]


def check_storage_for_workers(url: str, n_workers: int) -> None:
    """Refuse what the search's storage cannot carry: a proxy address (``autofuse search`` is
    the study's one coordinator: it writes the study's records, report and MLflow links with SQL,
    which the proxy does not carry), too many workers on a SQLite file."""
    if is_grpc(url):
        raise ConfigError(
            f"--storage {url}: `autofuse search` runs on the database URL itself (one process, "
            "it writes the study's SQL records and report); workers join through the proxy "
            "with `autofuse worker --storage grpc://HOST:PORT`"
        )
    if n_workers > 1 and url.startswith("sqlite"):
        if n_workers > MAX_SQLITE_WORKERS:
            raise ConfigError(
                f"{n_workers} workers on a SQLite file: SQLite is not safe for many "
                f"concurrent writers (at most {MAX_SQLITE_WORKERS}); use a PostgreSQL or "
                "MySQL --storage URL"
            )
        log.warning(
            "%d workers share a SQLite file; fine on one machine for a few workers, use "
            "PostgreSQL or MySQL for more",
            n_workers,
        )


def _worker_entry(cfg: WorkerConfig) -> None:  # pragma: no cover - runs in a child process
    logging.basicConfig(
        level=logging.WARNING, format=f"worker {cfg.rank}: %(levelname)s %(message)s"
    )
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    optuna.logging.set_verbosity(logging.WARNING)  # the parent shows the combined progress
    try:
        run_worker(cfg)
    except KeyboardInterrupt:
        pass
    except AutofuseError as e:
        log.error("%s", e)
        raise SystemExit(3) from None


def _stop(procs: list) -> None:
    """SIGTERM every live worker (children may have inherited SIGINT as ignored), then wait."""
    log.warning("stopping %d workers (their running trials are queued to resume)", len(procs))
    for p in procs:
        if p.is_alive() and p.pid:
            os.kill(p.pid, signal.SIGTERM)
    for p in procs:
        p.join(timeout=60)
        if p.is_alive():
            p.kill()


def run_workers(cfgs: list[WorkerConfig], progress: bool, metric: str) -> None:
    """Start one process per config, show one combined progress display, stop them on Ctrl-C.

    Workers that share a CUDA device each get their share of its memory (``device_share``)."""
    shares = device_shares([c.device for c in cfgs])
    cfgs = [dataclasses.replace(c, device_share=k) for c, k in zip(cfgs, shares, strict=True)]
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_worker_entry, args=(c,), name=f"autofuse-worker-{c.rank}") for c in cfgs
    ]
    for p in procs:
        p.start()
    first = cfgs[0]
    st = optuna.load_study(
        study_name=first.study, storage=open_storage(first.storage, first.options)
    )
    try:
        with interrupt_on_signals():
            if progress:
                with StudyProgress(st, first.n_total, metric) as bar:
                    while any(p.is_alive() for p in procs):
                        bar.update(f"[{sum(p.is_alive() for p in procs)} workers]")
                        time.sleep(1.0)
            else:
                for p in procs:
                    p.join()
    except KeyboardInterrupt:
        _stop(procs)
        raise
    failed = [p for p in procs if p.exitcode not in (0, None)]
    if failed and finished_count(st, first.stage) < first.n_total:
        codes = ", ".join(f"{p.name}: exit {p.exitcode}" for p in failed)
        raise AutofuseError(f"workers stopped before the study finished ({codes})")


def worker_config_from_study(
    study: str,
    storage: str,
    *,
    workdir: str | None = None,
    dataset: str | None = None,
    device: str | None = None,
    mlflow_uri: str | None = None,
    trials: int | None = None,
    seed: int | None = None,
    artifacts: str | None = None,
) -> WorkerConfig:
    """What ``autofuse worker`` needs, read from a study created by ``autofuse search``.

    The study's artifact store (its stored ``--artifacts``; ``artifacts`` names it differently
    from this host, e.g. another address of the same server) is checked here: a host that
    cannot reach it stops with one line instead of training trials no other host can resume."""
    summaries = {
        s.study_name: s
        for s in optuna.get_all_study_summaries(make_storage(storage), include_best_trial=False)
    }
    if study not in summaries:
        raise ConfigError(
            f"no study {study!r} in {mask_url(storage)}; create it with `autofuse search`"
        )
    attrs = summaries[study].user_attrs
    ds_path = dataset or attrs.get("dataset_path")
    if not ds_path or not Path(ds_path).exists():
        raise ConfigError(
            f"dataset {ds_path!r} of study {study!r} is not readable here; pass --dataset DIR"
        )
    opts = SearchOptions.from_stored(
        attrs.get("search_options"),
        trials=trials,
        mlflow_uri=mlflow_uri,
        storage=storage,
        workdir=str(Paths.resolve(workdir).root),
        seed=seed if seed is not None else (os.getpid() * 7919) % 2**31,
        artifacts=artifacts,
    )
    store = open_artifacts(opts.artifacts)
    if store is not None:
        store.check()
    # a worker that cannot reach the study's files stops now, before it takes a trial
    sharing.check(
        study, attrs, Paths.resolve(opts.workdir).study_dir(study), opts.artifacts, "worker"
    )
    return WorkerConfig(
        study=study,
        dataset=str(ds_path),
        space=attrs["space_config"],
        options=opts,
        n_total=int(opts.trials or 1),
        device=device or str(default_device()),
    )
