"""Workers: the loop that trains candidates of one study, in this process or in N processes.

A worker loads the study from the shared storage and runs ``study.optimize`` until the study
holds the requested number of finished trials. Several workers (processes here, or other
machines through ``autofuse worker``) share one study through its SQL storage: Optuna hands each
of them different trials, heartbeats mark the trials of a dead worker for retry, and every worker
seeds its sampler differently (base seed + rank) so they do not repeat each other.

Device assignment (Optuna leaves it to the user): one worker per visible GPU by default, each
pinned to its own device; on CPU, N processes with the torch thread count split between them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from autofuse.errors import AutofuseError, ConfigError
from autofuse.metrics import OBJECTIVES
from autofuse.paths import Paths

log = logging.getLogger(__name__)

#: SQLite is not safe for many concurrent writers: warn above 1 worker, refuse above this
MAX_SQLITE_WORKERS = 4
#: reasons that count as a fault for the consecutive-fault stop
FAULT_REASONS = ("oom", "diverged", "timeout", "invalid", "error")


@dataclass
class WorkerConfig:
    """Everything one worker process needs (picklable; also rebuilt from the study by
    ``autofuse worker``)."""

    study: str
    storage: str
    dataset: str
    space: dict
    workdir: str
    n_total: int
    sampler: str | None = None
    pruner: str | None = None
    seed: int = 0
    trial_timeout: float | None = None
    device: str = "cpu"
    mlflow_uri: str | None = None
    heartbeat_interval: int = 30
    grace_period: int | None = None
    max_retry: int = 2
    rank: int = 0
    threads: int | None = None
    max_faults: int = 5
    amp: bool = False


class WorkerStopped(AutofuseError):
    """A worker gave up after too many consecutive faulty trials."""


def open_storage(cfg: WorkerConfig):
    import warnings

    import optuna

    from autofuse.storage import make_storage

    # heartbeat + retry are flagged experimental by Optuna; they are what makes resume work
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return make_storage(
        cfg.storage,
        heartbeat_interval=cfg.heartbeat_interval,
        grace_period=cfg.grace_period or 4 * cfg.heartbeat_interval,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=cfg.max_retry
        ),
    )


@contextlib.contextmanager
def interrupt_on_signals():
    """Ctrl-C and SIGTERM (Slurm / Kubernetes stop a job with it) raise KeyboardInterrupt, so the
    running trial is queued to resume instead of being left RUNNING; restores the old handlers.

    SIGINT is reset too: a process started in the background of a non-interactive shell inherits
    SIGINT as ignored."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def finished_count(study) -> int:
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def run_worker(cfg: WorkerConfig, ds=None, progress: bool = False) -> None:
    """Train trials of ``cfg.study`` until it holds ``cfg.n_total`` finished trials."""
    import optuna

    from autofuse.data import Dataset
    from autofuse.space import SearchSpace, suggest_spec
    from autofuse.storage.history import HistoryStore
    from autofuse.study import (
        CandidateRunner,
        _make_tracker,
        make_pruner,
        make_sampler,
        reconcile_stale,
        save_checkpoint_if_top,
    )
    from autofuse.train import TrialFault

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ds = ds if ds is not None else Dataset.load(cfg.dataset)
    sp = SearchSpace.model_validate(cfg.space)
    paths = Paths.resolve(cfg.workdir)
    history = HistoryStore(cfg.storage)
    stor = open_storage(cfg)
    st = optuna.load_study(
        study_name=cfg.study,
        storage=stor,
        sampler=make_sampler(sp, cfg.sampler, cfg.seed + cfg.rank),
        pruner=make_pruner(sp, cfg.pruner),
    )
    metric, direction = OBJECTIVES[ds.task]
    modalities = {m: ds.modality_type(m) for m in ds.modality_names}
    dev = torch.device(cfg.device)
    runner = CandidateRunner(ds, paths, dev)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    study_dir = paths.study_dir(cfg.study)
    running_dir = study_dir / "running"
    tracker = _make_tracker(cfg.mlflow_uri, paths, cfg.study, ds)
    study = cfg.study
    # a worker killed earlier left RUNNING trials: fail them now (Optuna retries them) and record it
    optuna.storages.fail_stale_trials(st)
    reconcile_stale(st, history, tracker)
    # test hook for fault handling: "diverged@3,oom@5,timeout@6,invalid@7" (reason@trial number)
    inject = set(filter(None, os.environ.get("AUTOFUSE_INJECT_FAULT", "").split(",")))

    def objective(trial: optuna.Trial) -> float:
        t_trial = time.monotonic()
        overhead = 0.0  # seconds spent on storage + MLflow bookkeeping in this trial

        def timed(fn, *a, **k):
            nonlocal overhead
            t = time.monotonic()
            try:
                return fn(*a, **k)
            finally:
                overhead += time.monotonic() - t

        spec = suggest_spec(trial, sp, modalities)
        frozen = next(t for t in st.get_trials(deepcopy=False) if t.number == trial.number)
        retry_of = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
        if retry_of is None:
            retry_of = trial.user_attrs.get("retry_of")  # re-enqueued after an interrupt
        baseline = trial.user_attrs.get("baseline")
        encs = {m: f"{e.name}/{e.mode}" for m, e in spec.encoders.items()}
        attrs = {
            "spec": spec.model_dump(mode="json"),
            "family": spec.fusion.family,
            "method": spec.fusion.method,
            "point": spec.fusion.point,
            "encoders": encs,
            "device": str(dev),
            "worker": worker,
        }
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        if retry_of is not None:
            trial.set_user_attr("retry_of", retry_of)
            timed(reconcile_stale, st, history, tracker)
        timed(
            history.record_trial,
            study,
            trial.number,
            status="RUNNING",
            started_at=_utcnow(),
            baseline=baseline,
            retry_of=retry_of,
            **attrs,
        )
        run_id = timed(
            tracker.start_trial,
            trial.number,
            {k: str(v) for k, v in trial.params.items()},
            {
                "autofuse.family": spec.fusion.family,
                "autofuse.method": spec.fusion.method,
                "autofuse.point": spec.fusion.point,
                "autofuse.encoders": json.dumps(encs),
                "autofuse.baseline": baseline or "",
                "autofuse.worker": worker,
            },
        )
        if run_id:
            timed(history.record_trial, study, trial.number, mlflow_run_id=run_id)
        # a retried trial continues from the last epoch checkpoint of the interrupted attempt
        ckpt_path = running_dir / f"trial_{trial.number}.pt"
        resume = None
        old = running_dir / f"trial_{retry_of}.pt" if retry_of is not None else None
        if old is not None and old.exists():
            resume = torch.load(old, map_location="cpu", weights_only=False)
            log.info(
                "trial %d resumes trial %d from epoch %d", trial.number, retry_of, resume["epoch"]
            )
            for h in resume["history"]:
                timed(
                    history.log_epoch,
                    study,
                    trial.number,
                    h["epoch"],
                    {k: v for k, v in h.items() if k != "epoch"},
                )

        def on_epoch(epoch: int, val: dict) -> None:
            timed(history.log_epoch, study, trial.number, epoch, val)
            timed(
                tracker.log_epoch,
                run_id,
                epoch,
                {(f"val_{k}" if k != "train_loss" else k): v for k, v in val.items()},
            )
            if f"diverged@{trial.number}" in inject:
                raise TrialFault("diverged", "injected non-finite loss")
            if f"oom@{trial.number}" in inject:
                raise torch.OutOfMemoryError("CUDA out of memory (injected)")
            if f"timeout@{trial.number}" in inject:
                time.sleep((cfg.trial_timeout or 0) + 0.5)
            trial.report(val[metric], epoch)
            if trial.should_prune():
                trial.set_user_attr("reason", "pruned")
                trial.set_user_attr("epochs_run", epoch)
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        def on_checkpoint(state: dict) -> None:
            running_dir.mkdir(parents=True, exist_ok=True)
            tmp = ckpt_path.with_suffix(".tmp")
            torch.save(state, tmp)
            tmp.replace(ckpt_path)

        def end(
            status: str,
            reason: str | None = None,
            error: str | None = None,
            *,
            keep_checkpoint: bool = False,
            mlflow_status: str | None = None,
            **fields,
        ) -> None:
            trial.set_user_attr("overhead_s", overhead)
            trial.set_user_attr("trial_time_s", time.monotonic() - t_trial)
            timed(
                history.record_trial,
                study,
                trial.number,
                status=status,
                reason=reason,
                error=error,
                finished_at=_utcnow(),
                **fields,
            )
            val = fields.get("val_metrics") or {}
            test = fields.get("test_metrics") or {}
            timed(
                tracker.end_trial,
                run_id,
                mlflow_status or ("FINISHED" if status in ("COMPLETE", "PRUNED") else "FAILED"),
                {
                    **{f"val_{k}": v for k, v in val.items()},
                    **{f"test_{k}": v for k, v in test.items()},
                },
                {
                    "autofuse.status": status,
                    "autofuse.reason": reason or "",
                    "autofuse.trial": str(trial.number),
                },
                attrs["spec"],
            )
            if not keep_checkpoint:
                ckpt_path.unlink(missing_ok=True)
                if old is not None:
                    old.unlink(missing_ok=True)

        deadline = time.monotonic() + cfg.trial_timeout if cfg.trial_timeout else None
        try:
            if f"invalid@{trial.number}" in inject:
                raise TrialFault("invalid", "injected: architecture cannot be built")
            out = runner.run(
                spec,
                on_epoch=on_epoch,
                deadline=deadline,
                on_checkpoint=on_checkpoint,
                resume=resume,
                amp=cfg.amp,
            )
        except TrialFault as f:
            trial.set_user_attr("reason", f.reason)
            trial.set_user_attr("error", str(f))
            log.warning("trial %d ended as pruned (%s): %s", trial.number, f.reason, f)
            end("PRUNED", f.reason, str(f))
            raise optuna.TrialPruned(f.reason) from None
        except torch.OutOfMemoryError as e:
            # free what the candidate held so the worker can go on with the next one
            runner.release()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            msg = str(e).splitlines()[0] if str(e) else "out of memory"
            trial.set_user_attr("reason", "oom")
            trial.set_user_attr("error", msg)
            log.warning("trial %d ended as pruned (oom): %s", trial.number, msg)
            end("PRUNED", "oom", msg)
            raise optuna.TrialPruned("oom") from None
        except optuna.TrialPruned as e:
            end("PRUNED", "pruned", str(e))
            raise
        except KeyboardInterrupt:
            # stopped by the user: the trial fails, and a copy is queued that resumes from its
            # last epoch checkpoint when the study runs again
            trial.set_user_attr("reason", "interrupted")
            end(
                "FAIL",
                "interrupted",
                "stopped by the user",
                keep_checkpoint=True,
                mlflow_status="KILLED",
            )
            st.enqueue_trial(
                trial.params,
                user_attrs={
                    "retry_of": trial.number,
                    **({"baseline": baseline} if baseline else {}),
                },
            )
            raise
        except Exception as e:
            trial.set_user_attr("reason", "error")
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")
            log.warning("trial %d failed:\n%s", trial.number, traceback.format_exc())
            end("FAIL", "error", f"{type(e).__name__}: {e}")
            raise
        value = float(out["val_metrics"][metric])
        for k in (
            "val_metrics",
            "test_metrics",
            "n_params",
            "latency_ms",
            "train_time_s",
            "epochs_run",
            "best_epoch",
            "epochs_trained",
            "resumed_from_epoch",
        ):
            trial.set_user_attr(k, out[k])
        trial.set_user_attr("history", out["history"])
        if dev.type == "cuda":
            trial.set_user_attr("peak_gpu_mb", torch.cuda.max_memory_allocated(dev) / 2**20)
        timed(save_checkpoint_if_top, st, study_dir, trial.number, value, direction, out)
        cache = runner.feature_cache
        end(
            "COMPLETE",
            value=value,
            val_metrics=out["val_metrics"],
            test_metrics=out["test_metrics"],
            n_params=out["n_params"],
            latency_ms=out["latency_ms"],
            train_time_s=out["train_time_s"],
            epochs_run=out["epochs_run"],
            best_epoch=out["best_epoch"],
            resumed_from_epoch=out["resumed_from_epoch"] or None,
            cache_hits=getattr(cache, "hits", None),
            cache_misses=getattr(cache, "misses", None),
        )
        return value

    faults = {"n": 0, "last": ""}

    def count_faults(study, trial) -> None:
        reason = trial.user_attrs.get("reason")
        if trial.state == optuna.trial.TrialState.FAIL or reason in FAULT_REASONS:
            faults["n"] += 1
            faults["last"] = reason or "failed"
        else:
            faults["n"] = 0

    with interrupt_on_signals():
        _optimize(
            st,
            objective,
            cfg.n_total,
            metric,
            progress,
            extra_callbacks=[count_faults],
            should_stop=lambda: faults["n"] >= cfg.max_faults,
            storage_url=cfg.storage,
        )
    if faults["n"] >= cfg.max_faults:
        raise WorkerStopped(
            f"worker {worker} stopped after {faults['n']} consecutive faulty trials "
            f"(last reason: {faults['last']}); see `autofuse leaderboard --study "
            f"{study}` and the trials' reasons"
        )


def _utcnow():
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _optimize(
    st,
    objective,
    n_total: int,
    metric: str,
    progress: bool,
    extra_callbacks=(),
    should_stop=lambda: False,
    storage_url: str | None = None,
) -> None:
    """Run trials one ``study.optimize(n_trials=1)`` at a time until the study holds ``n_total``
    finished trials.

    Optuna's ``MaxTrialsCallback`` stops a worker only after its own trial ends, so N workers
    overshoot by up to N - 1 trials. Here a worker starts a trial only while finished + running
    trials are below the target; when the rest are running elsewhere it waits, failing stale
    trials (their worker died) so that their retries get picked up. With ``storage_url`` the check
    and the creation of the trial happen under a cross-process study lock (released as soon as
    the new trial is RUNNING), so concurrent workers never start one trial too many.
    """
    import optuna
    from optuna.trial import TrialState

    from autofuse.storage.lock import StudyLock

    lock = StudyLock(storage_url, st.study_name) if storage_url else contextlib.nullcontext()

    def locked_objective(trial):
        if storage_url:
            lock.release()  # this trial is RUNNING now, other workers count it
        return objective(trial)

    callbacks = list(extra_callbacks)
    bar_cm = StudyProgress(st, n_total, metric) if progress else contextlib.nullcontext()
    try:
        with bar_cm as bar:
            while not should_stop():
                with lock:
                    # one snapshot: with two reads a trial finishing in between counts as neither
                    states = [t.state for t in st.get_trials(deepcopy=False)]
                    done = states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED)
                    if done >= n_total:
                        break
                    if done + states.count(TrialState.RUNNING) < n_total:
                        st.optimize(
                            locked_objective, n_trials=1, callbacks=callbacks, catch=(Exception,)
                        )
                        if bar is not None:
                            bar.update()
                        continue
                optuna.storages.fail_stale_trials(st)  # the rest are running elsewhere: wait
                time.sleep(1.0)
    finally:
        if storage_url:
            lock.close()


class StudyProgress:
    """A rich progress bar over the study's finished trials, current best and elapsed time."""

    def __init__(self, st, n_total: int, metric: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.st, self.metric = st, metric
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[best]}"),
        )
        self.task = self.bar.add_task(
            f"study {st.study_name}", total=n_total, completed=finished_count(st), best=""
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
            self.task, completed=finished_count(self.st), best=f"{best} {extra}".strip()
        )


# ---- several worker processes ------------------------------------------------------------------


def plan_devices(workers: int | None, devices: str | None) -> list[str]:
    """One device string per worker: ``--devices cuda:0,cuda:1`` / ``cpu``; default one worker per
    visible GPU, else ``workers`` CPU processes."""
    if devices:
        devs = [d.strip() for d in devices.split(",") if d.strip()]
        bad = [d for d in devs if not (d == "cpu" or d == "cuda" or d.startswith("cuda:"))]
        if bad:
            raise ConfigError(f"--devices: {bad} are not device names (cpu, cuda, cuda:N)")
        if any(d.startswith("cuda") for d in devs) and not torch.cuda.is_available():
            raise ConfigError("--devices names a CUDA device but no GPU is visible")
        n = workers or len(devs)
        return [devs[i % len(devs)] for i in range(n)]
    if torch.cuda.is_available():
        n_gpu = torch.cuda.device_count()
        n = workers or n_gpu
        return [f"cuda:{i % n_gpu}" for i in range(n)]
    return ["cpu"] * (workers or 1)


def check_storage_for_workers(url: str, n_workers: int) -> None:
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


def _worker_entry(cfg_dict: dict) -> None:  # pragma: no cover - runs in a child process
    logging.basicConfig(
        level=logging.WARNING, format=f"worker {cfg_dict['rank']}: %(levelname)s %(message)s"
    )
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)  # the parent shows the combined progress
    try:
        run_worker(WorkerConfig(**cfg_dict))
    except KeyboardInterrupt:
        pass
    except AutofuseError as e:
        log.error("%s", e)
        raise SystemExit(3) from None


def run_workers(cfgs: list[WorkerConfig], progress: bool, metric: str) -> None:
    """Start one process per config, show one combined progress display, stop them on Ctrl-C."""
    import multiprocessing as mp

    import optuna

    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_worker_entry, args=(asdict(c),), name=f"autofuse-worker-{c.rank}")
        for c in cfgs
    ]
    for p in procs:
        p.start()
    st = optuna.load_study(study_name=cfgs[0].study, storage=open_storage(cfgs[0]))
    n_total = cfgs[0].n_total
    stack = contextlib.ExitStack()
    stack.enter_context(interrupt_on_signals())
    try:
        if progress:
            with StudyProgress(st, n_total, metric) as bar:
                while any(p.is_alive() for p in procs):
                    bar.update(f"[{sum(p.is_alive() for p in procs)} workers]")
                    time.sleep(1.0)
        else:
            for p in procs:
                p.join()
    except KeyboardInterrupt:
        log.warning("stopping %d workers (their running trials are queued to resume)", len(procs))
        for p in procs:  # SIGTERM: children may have inherited SIGINT as ignored
            if p.is_alive() and p.pid:
                os.kill(p.pid, signal.SIGTERM)
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
        raise
    finally:
        stack.close()
    failed = [p for p in procs if p.exitcode not in (0, None)]
    if failed and finished_count(st) < n_total:
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
) -> WorkerConfig:
    """What ``autofuse worker`` needs, read from a study created by ``autofuse search``."""
    import optuna

    summaries = {
        s.study_name: s
        for s in optuna.get_all_study_summaries(
            open_storage(WorkerConfig(study, storage, "", {}, "", 0)), include_best_trial=False
        )
    }
    if study not in summaries:
        raise ConfigError(f"no study {study!r} in {storage}; create it with `autofuse search`")
    attrs = summaries[study].user_attrs
    opts = attrs.get("search_options") or {}
    ds_path = dataset or attrs.get("dataset_path")
    if not ds_path or not Path(ds_path).exists():
        raise ConfigError(
            f"dataset {ds_path!r} of study {study!r} is not readable here; pass --dataset DIR"
        )
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return WorkerConfig(
        study=study,
        storage=storage,
        dataset=str(ds_path),
        space=attrs["space_config"],
        workdir=str(Paths.resolve(workdir).root),
        n_total=int(trials or opts.get("n_total", 1)),
        sampler=opts.get("sampler"),
        pruner=opts.get("pruner"),
        seed=seed if seed is not None else (os.getpid() * 7919) % 2**31,
        trial_timeout=opts.get("trial_timeout"),
        device=device,
        mlflow_uri=mlflow_uri or opts.get("mlflow_uri"),
        heartbeat_interval=int(opts.get("heartbeat_interval", 30)),
        max_retry=int(opts.get("max_retry", 2)),
        amp=bool(opts.get("amp", False)),
    )
