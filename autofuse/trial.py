"""One trial execution: sample a candidate, train it, record it, with named hooks.

:class:`TrialExecution` runs one Optuna trial from start to end, top to bottom::

    start        sample the spec, record the trial RUNNING (SQL, Optuna, MLflow), load the epoch
                 checkpoint of the attempt it retries
    train        CandidateRunner.run(...) -> epoch_end / checkpoint after every epoch
    end          complete | pruned | fault (pruned with a reason) | failed | interrupted

Everything that happens at those points goes through hooks with Lightning-callback names
(:class:`TrialHook`: ``on_trial_start``, ``on_epoch_end``, ``on_checkpoint``, ``on_fault``,
``on_trial_end``). Tests install hooks of their own, e.g. :class:`autofuse.testing.InjectFaults`.

Out of device memory: the candidate's memory is freed (nothing keeps the failed attempt's model
alive, then ``torch.cuda.empty_cache``) and the same design is retried once with half the batch
size (``oom_retry``, ``batch_size`` in the record); a second out-of-memory error ends the trial
as pruned with the reason ``oom``. The worker goes on either way.

:class:`TrialLog` is the one writer of a trial's record: the same fields go to autofuse's SQL
history, to the trial's Optuna user attributes and to its MLflow run.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import torch

from autofuse._util import first_line, utcnow
from autofuse.checkpoints import CheckpointStore
from autofuse.errors import AutofuseError, MissingFiles
from autofuse.options import SearchOptions
from autofuse.runner import CandidateResult, CandidateRunner
from autofuse.space import SearchSpace
from autofuse.spec import ArchitectureSpec
from autofuse.stages import (
    FINALIST,
    FUSION,
    UNIMODAL,
    StagePlan,
    Stages,
    finalist_outputs,
    finished_in_stage,
    queue_attrs,
    stage_of,
)
from autofuse.storage.history import TRIAL_FIELDS, HistoryStore, reconcile
from autofuse.storage.mlflow import final_metrics, run_status, trial_tags
from autofuse.storage.sql import close_storage
from autofuse.train import TrialFault

log = logging.getLogger(__name__)

#: record fields that are not Optuna attributes (Optuna keeps them itself, or they are SQL-only)
_NOT_ATTRS = {"number", "status", "value", "started_at", "finished_at", "mlflow_run_id"}
#: scalar record fields logged as final MLflow metrics
_SCALARS = ("n_params", "latency_ms", "train_time_s", "epochs_run", "best_epoch", "peak_gpu_mb")


class TrialHook:
    """Override what you need; every method is called with the running :class:`TrialExecution`.

    A hook may raise :class:`~autofuse.train.TrialFault` (the trial ends as pruned with that
    reason) or ``optuna.TrialPruned``.
    """

    def on_trial_start(self, ex: TrialExecution) -> None:
        """The trial is recorded RUNNING; training has not started."""

    def on_epoch_end(self, ex: TrialExecution, epoch: int, metrics: dict[str, float]) -> None:
        """An epoch ended (its metrics are recorded; the pruner has not been asked yet)."""

    def on_checkpoint(self, ex: TrialExecution, state: dict[str, Any]) -> None:
        """The epoch checkpoint was written."""

    def on_fault(self, ex: TrialExecution, fault: TrialFault) -> None:
        """The candidate could not finish (diverged, oom, timeout, invalid)."""

    def on_trial_end(self, ex: TrialExecution, status: str, fields: dict[str, Any]) -> None:
        """The trial's final record was written (``status``: COMPLETE, PRUNED or FAIL)."""


@dataclass
class WorkerContext:
    """What every trial of one worker shares."""

    study: optuna.Study
    ds: Any
    space: SearchSpace
    options: SearchOptions
    runner: CandidateRunner
    history: HistoryStore
    tracker: Any  # MlflowTracker | NullTracker
    store: CheckpointStore
    metric: str
    direction: str
    stages: Stages
    hooks: list[TrialHook] = field(default_factory=list)
    #: a stage with a time budget: when it ends (``time.time()``), its trial count, and the
    #: least time a trial gets
    budget_end: float | None = None
    stage_target: int | None = None
    min_trial_s: float = 0.0
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    #: the study's Optuna storage, when the context opened it (closed with the context)
    rdb: Any = None
    #: set when this worker must take no more trials (it cannot reach the study's files)
    stopped: AutofuseError | None = None

    def close(self) -> None:
        """Close the context's database connections."""
        self.history.close()
        close_storage(self.rdb)

    @property
    def modalities(self) -> dict[str, str]:
        return {m: self.ds.modality_type(m) for m in self.ds.modality_names}

    @property
    def device(self) -> torch.device:
        return self.runner.device


class TrialLog:
    """The one writer of a trial's record: SQL history, Optuna user attributes and MLflow run.

    ``overhead_s`` accumulates the time spent writing (storage + MLflow bookkeeping).
    """

    def __init__(self, ctx: WorkerContext, trial: optuna.Trial) -> None:
        self.ctx, self.trial = ctx, trial
        self.run_id: str | None = None
        self.overhead_s = 0.0

    def _timed(self, fn, *args, **kwargs):
        t = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            self.overhead_s += time.monotonic() - t

    def write(self, **fields: Any) -> None:
        """Set record fields in SQL and as Optuna attributes (an unset field stays absent there)."""
        for k, v in fields.items():
            if k not in _NOT_ATTRS and v is not None:
                self.trial.set_user_attr(k, v)
        sql = {k: v for k, v in fields.items() if k in TRIAL_FIELDS}
        self._timed(
            self.ctx.history.record_trial, self.ctx.study.study_name, self.trial.number, **sql
        )

    def start(self, **fields: Any) -> None:
        """Record the trial RUNNING and open its MLflow run."""
        self.write(status="RUNNING", started_at=utcnow(), **fields)
        tags = {**trial_tags(fields), "autofuse.baseline": fields.get("baseline") or ""}
        params = {k: str(v) for k, v in self.trial.params.items()}
        self.run_id = self._timed(self.ctx.tracker.start_trial, self.trial.number, params, tags)
        if self.run_id:
            self.write(mlflow_run_id=self.run_id)

    def epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        study, n = self.ctx.study.study_name, self.trial.number
        self._timed(self.ctx.history.log_epoch, study, n, epoch, metrics)
        named = {(f"val_{k}" if k != "train_loss" else k): v for k, v in metrics.items()}
        self._timed(self.ctx.tracker.log_epoch, self.run_id, epoch, named)

    def end(self, status: str, mlflow_status: str | None = None, **fields: Any) -> None:
        """The final record, everywhere at once."""
        self.write(status=status, finished_at=utcnow(), **fields)
        val = {k: v for k, v in (fields.get("val_metrics") or {}).items() if k != "train_loss"}
        metrics = final_metrics(
            val,
            fields.get("test_metrics"),
            **{k: fields.get(k) for k in _SCALARS},
        )
        tags = trial_tags({**fields, "status": status, "number": self.trial.number})
        tags.setdefault("autofuse.reason", "")
        mstatus = mlflow_status or ("FINISHED" if status in ("COMPLETE", "PRUNED") else "FAILED")
        spec = self.trial.user_attrs.get("spec")
        self._timed(self.ctx.tracker.end_trial, self.run_id, mstatus, metrics, tags, spec)


class TrialExecution:
    """Runs one trial of ``ctx.study`` (see the module docstring)."""

    def __init__(self, ctx: WorkerContext, trial: optuna.Trial) -> None:
        self.ctx, self.trial = ctx, trial
        self.log = TrialLog(ctx, trial)
        self.plan: StagePlan | None = None
        self.spec: ArchitectureSpec | None = None
        self.retry_of: int | None = None
        self.resume: dict | None = None
        self.t0 = time.monotonic()
        self.last_checkpoint = self.t0
        #: 1, or 2 for the retry with half the batch size after an out-of-memory error
        self.attempt = 1
        self.attempt_t0 = self.t0
        #: the status of the trial's final record, once written
        self.ended: str | None = None
        #: the last epoch trained (an interrupted trial says where it stopped)
        self.last_epoch = 0

    @property
    def number(self) -> int:
        return self.trial.number

    def _hooks(self, name: str, *args: Any) -> None:
        for hook in self.ctx.hooks:
            getattr(hook, name)(self, *args)

    # ---- the trial, top to bottom ----------------------------------------------------------------
    def run(self) -> float:
        """Train and record the trial; returns its objective value (Optuna's ``objective``).

        Whatever ends the trial, its record ends with it, in the state Optuna gives the trial:
        COMPLETE (returned), PRUNED (``TrialPruned``) or FAIL (an exception, Ctrl-C), also when
        the error comes from sampling, recording or keeping the result."""
        try:
            return self._run()
        except optuna.TrialPruned:
            if self.ended not in (None, "PRUNED"):  # a hook pruned after another end
                self.log.end("PRUNED", reason="pruned")
            elif self.ended is None:
                self.end("PRUNED", reason="pruned")
            raise
        except KeyboardInterrupt:
            if self.ended != "FAIL":
                self.interrupted()
            raise
        except MissingFiles as e:
            mark_logged(e)
            if self.ended is None:
                self.hand_back(e)
            raise
        except Exception as e:
            # one line on the terminal; the traceback goes to the trial's record (SQL ``error``,
            # the Optuna attribute, the MLflow run) and to the debug log
            mark_logged(e)
            error = f"{type(e).__name__}: {first_line(e)}"
            log.warning("trial %d failed: %s (traceback in its record)", self.number, error)
            log.debug("trial %d failed:\n%s", self.number, traceback.format_exc())
            error += "\n\n" + traceback.format_exc()
            if self.ended is None:
                self.end("FAIL", reason="error", error=error)
            elif self.ended != "FAIL":  # after its record was written: Optuna fails it
                self.log.end("FAIL", reason="error", error=error)
            raise

    def _run(self) -> float:
        self.start()
        if self.plan.reused is not None:
            return self.reuse(self.plan.reused)
        oom = None
        try:
            self._hooks("on_trial_start")
            result = self.train()
        except TrialFault as f:
            self.fault(f)
        except torch.OutOfMemoryError as e:  # outside training (a hook): no retry
            oom = first_line(e) or "out of memory"
            traceback.clear_frames(e.__traceback__)
        except optuna.TrialPruned as e:
            self.end("PRUNED", reason="pruned", error=str(e))
            raise
        if oom is not None:
            self.free_memory()
            self.fault(TrialFault("oom", oom))
        try:
            return self.complete(result)
        except TrialFault as f:
            self.fault(f)
            raise  # not reached: fault raises TrialPruned

    def train(self) -> CandidateResult:
        """``CandidateRunner.run`` on the spec; after an out-of-memory error, once more with half
        the batch size (from scratch, with the full ``--trial-timeout`` again).

        Raises:
            TrialFault: ``oom`` when the retry runs out of memory too (or the batch cannot be
                halved).
        """
        while True:
            oom = None
            try:
                return self.train_once()
            except torch.OutOfMemoryError as e:
                oom = first_line(e) or "out of memory"
                # the traceback's frames hold the model, its activations and the optimiser
                traceback.clear_frames(e.__traceback__)
            # here, outside the except block, the exception and its frames are gone
            self.free_memory()
            batch_size = self.spec.training.batch_size
            if self.attempt > 1 or batch_size < 2:
                raise TrialFault("oom", oom)
            self.attempt += 1
            self.attempt_t0 = time.monotonic()
            if self.ctx.device.type == "cuda":  # the peak of the attempt that completes
                torch.cuda.reset_peak_memory_stats(self.ctx.device)
            training = self.spec.training.model_copy(update={"batch_size": batch_size // 2})
            self.spec = self.spec.model_copy(update={"training": training})
            log.warning(
                "trial %d ran out of memory (%s); retrying with batch size %d",
                self.number,
                oom,
                training.batch_size,
            )
            self.log.write(
                oom_retry=True,
                batch_size=training.batch_size,
                spec=self.spec.model_dump(mode="json"),
            )

    def train_once(self) -> CandidateResult:
        """One attempt: ``CandidateRunner.run``, or ``run_cv`` for a design ranked by
        cross-validation (a few seconds per fold: a retry starts it again, no checkpoints)."""
        runner, plan = self.ctx.runner, self.plan
        if plan.folds:
            return runner.run_cv(
                self.spec,
                plan.folds,
                on_epoch=self.epoch_end,
                on_fold=self.fold_end,
                deadline=self.deadline(),
                amp=self.ctx.options.amp,
            )
        return runner.run(
            self.spec,
            on_epoch=self.epoch_end,
            on_checkpoint=self.checkpoint,
            deadline=self.deadline(),
            resume=self.resume if self.attempt == 1 else None,
            amp=self.ctx.options.amp,
            train_rows=plan.train_rows,
            init_state=plan.init_state,
            first_epoch_free=plan.first_epoch_free,
        )

    def free_memory(self) -> None:
        """After an out-of-memory error: drop the runner's in-memory inputs, collect what the
        failed attempt left (reference cycles included) and return the CUDA cache's blocks, so
        the next attempt, and the other workers on the device, get them."""
        self.ctx.runner.release()
        gc.collect()
        if self.ctx.device.type == "cuda":
            torch.cuda.empty_cache()

    def start(self) -> None:
        """Sample the spec, record the trial RUNNING, find the checkpoint of a retried attempt."""
        ctx, trial = self.ctx, self.trial
        if ctx.device.type == "cuda":  # peak_gpu_mb is this trial's
            torch.cuda.reset_peak_memory_stats(ctx.device)
        self.plan = ctx.stages.plan(trial)
        self.spec = self.plan.spec
        self.retry_of = retried_trial(ctx.study, trial)
        if self.retry_of is not None:
            reconcile_stale(ctx.study, ctx.history, ctx.tracker)
        design = {
            "family": self.spec.fusion.family,
            "method": self.spec.fusion.method,
            "point": self.spec.fusion.point,
        }
        if self.plan.stage == UNIMODAL:  # a unimodal model: family "unimodal", its modality
            (m,) = self.spec.encoders
            design = {"family": UNIMODAL, "method": m, "point": "late"}
        self.log.start(
            spec=self.spec.model_dump(mode="json"),
            **design,
            encoders={m: f"{e.name}/{e.mode}" for m, e in self.spec.encoders.items()},
            device=str(ctx.device),
            worker=ctx.worker,
            baseline=trial.user_attrs.get("baseline"),
            retry_of=self.retry_of,
            stage=self.plan.stage if ctx.space.stages.enabled else None,
            **self.plan.record,
        )
        if self.retry_of is not None:
            self.resume = ctx.store.load_running(self.retry_of)
        if self.resume is not None:
            log.info(
                "trial %d resumes trial %d from epoch %d",
                self.number,
                self.retry_of,
                self.resume["epoch"],
            )
            for h in self.resume["history"]:
                self.log.epoch(h["epoch"], {k: v for k, v in h.items() if k != "epoch"})

    def deadline(self) -> float | None:
        """When training stops: ``--trial-timeout`` (from the start of this attempt), and in a
        stage with a time budget this trial's share of what is left (the remaining time over the
        stage's unfinished trials, so time a quick trial leaves over goes to the slower ones)."""
        ctx = self.ctx
        limits = [self.attempt_t0 + ctx.options.trial_timeout] if ctx.options.trial_timeout else []
        if ctx.budget_end is not None and ctx.stage_target:
            left = ctx.stage_target - finished_in_stage(ctx.study, self.plan.stage)
            share = ctx.budget_end - time.time()
            if self.plan.stage != FUSION:  # every trial of the stage runs: share what is left
                share /= max(left, 1)
            limits.append(self.t0 + max(share, ctx.min_trial_s))
        return min(limits) if limits else None

    # ---- during training -------------------------------------------------------------------------
    def epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """Record the epoch, call the hooks, then ask the pruner."""
        self.last_epoch = epoch
        self.log.epoch(epoch, metrics)
        self._hooks("on_epoch_end", epoch, metrics)
        if not self.plan.prunable or self.plan.folds:  # cross-validated: pruned fold by fold
            return
        self.trial.report(metrics[self.ctx.metric], epoch)
        if self.trial.should_prune():
            self.log.write(epochs_run=epoch)
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")

    def fold_end(self, fold: int, scores: list[float]) -> None:
        """A cross-validation fold ended: the pruner sees the mean over the folds so far at
        step ``fold + 1`` (a design clearly behind after its first fold stops there)."""
        self.log.write(cv_scores=scores)
        if not self.plan.prunable:
            return
        self.trial.report(sum(scores) / len(scores), fold + 1)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after fold {fold + 1} of {len(self.plan.folds)}")

    def checkpoint(self, epoch: int, make_state: Callable[[], dict[str, Any]]) -> None:
        """Keep the full training state, so a retry continues from this epoch: at most every
        ``options.checkpoint_every_s`` seconds (copying the state each epoch is not free, and a
        trial of a few seconds gains nothing from it)."""
        self.last_epoch = max(self.last_epoch, epoch)  # trained (epoch_end comes next)
        every = self.ctx.options.checkpoint_every_s
        if every and time.monotonic() - self.last_checkpoint < every:
            return
        state = make_state()
        self.ctx.store.save_running(self.number, state)
        self.last_checkpoint = time.monotonic()
        self._hooks("on_checkpoint", state)

    # ---- ends ------------------------------------------------------------------------------------
    def end(self, status: str, *, keep_checkpoint: bool = False, **fields: Any) -> None:
        fields.setdefault("trial_time_s", time.monotonic() - self.t0)
        fields["overhead_s"] = self.log.overhead_s
        self.log.end(status, **fields)
        self.ended = status
        if not keep_checkpoint:
            self.ctx.store.discard_running(self.number, self.retry_of)
        self._hooks("on_trial_end", status, fields)

    def fault(self, f: TrialFault) -> None:
        """A candidate that cannot finish ends as pruned with the reason (TPE learns from it)."""
        log.warning("trial %d ended as pruned (%s): %s", self.number, f.reason, f)
        self._hooks("on_fault", f)
        self.end("PRUNED", reason=f.reason, error=str(f), **self.peak_memory())
        raise optuna.TrialPruned(f.reason) from None

    def peak_memory(self) -> dict[str, float]:
        """``{"peak_gpu_mb": ...}``: the most CUDA memory this trial allocated (MiB); empty on
        the CPU."""
        if self.ctx.device.type != "cuda":
            return {}
        return {"peak_gpu_mb": torch.cuda.max_memory_allocated(self.ctx.device) / 2**20}

    def interrupted(self) -> None:
        """Stopped by the user: the trial fails and a copy is queued that resumes from its last
        epoch checkpoint when the study runs again (one warning line says so)."""
        where = f"after epoch {self.last_epoch}" if self.last_epoch else "before its first epoch"
        log.warning("trial %d interrupted %s; queued to resume", self.number, where)
        self.end(
            "FAIL",
            keep_checkpoint=True,
            mlflow_status="KILLED",
            reason="interrupted",
            error="stopped by the user",
        )
        self.requeue()

    def requeue(self) -> None:
        """Queue a copy of this trial (same stage, same fixed design) that resumes from its
        last epoch checkpoint."""
        self.ctx.study.enqueue_trial(
            self.trial.params, user_attrs={**queue_attrs(self.trial), "retry_of": self.number}
        )

    def hand_back(self, e: MissingFiles) -> None:
        """This process cannot reach files the trial needs (another process wrote them in its
        own work folder): the trial is not a fault. It ends without a value, a copy is queued
        for a process that has the files, and this worker stops with one line (``e``)."""
        self.end(
            "FAIL",
            keep_checkpoint=True,
            mlflow_status="KILLED",
            reason="missing_files",
            error=str(e),
        )
        self.requeue()
        self.ctx.stopped = e

    def complete(self, result: CandidateResult) -> float:
        ctx = self.ctx
        value = float(result.val_metrics[ctx.metric])
        if not math.isfinite(value):  # Optuna would fail the trial: end it as a fault instead
            raise TrialFault("diverged", f"validation {ctx.metric} is {value}")
        fields = {**result.metrics_fields(), **self.peak_memory()}
        t = time.monotonic()
        self.keep(result, value)
        self.log.overhead_s += time.monotonic() - t
        cache = ctx.runner.feature_cache
        self.end(
            "COMPLETE",
            value=value,
            cache_hits=getattr(cache, "hits", None),
            cache_misses=getattr(cache, "misses", None),
            **fields,
        )
        return value

    def keep(self, result: CandidateResult, value: float) -> None:
        """What a completed trial leaves behind: a stage-1 encoder's features and weights, every
        finalist's checkpoint and outputs, a top fusion design's or a baseline's checkpoint (and
        out-of-fold outputs)."""
        ctx, stage = self.ctx, self.plan.stage
        if stage == UNIMODAL:
            ctx.stages.after_unimodal(self.plan, result)
            return
        args = (result.model, result.spec, result.dataset_info, result.source_state)
        if stage == FINALIST:
            ctx.store.save_finalist(self.number, *args)
            ctx.store.save_outputs(self.number, **finalist_outputs(result, ctx.device))
            return
        if "baseline" in self.trial.user_attrs:  # the best baseline enters stage 3: always kept
            ctx.store.save_finalist(self.number, *args)
            kept = True
        else:
            done = ctx.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            others = [t.value for t in done if stage_of(t) == FUSION]
            kept = ctx.store.save_if_top(self.number, value, others, ctx.direction, *args)
        if kept and result.oof is not None:  # a cross-validated design: its out-of-fold outputs
            ctx.store.save_outputs(self.number, **oof_outputs(result))

    def reuse(self, rec: dict[str, Any]) -> float:
        """A stage-1 run an earlier study already made (same dataset, encoder and settings)."""
        value = float(rec["val_metrics"][self.ctx.metric])
        fields = {k: rec.get(k) for k in _REUSED}
        self.end("COMPLETE", value=value, reused=True, **fields)
        return value


#: the fields of a reused stage-1 record
_REUSED = (
    "val_metrics",
    "test_metrics",
    "history",
    "n_params",
    "latency_ms",
    "train_time_s",
    "epochs_run",
    "best_epoch",
)


def oof_outputs(result: CandidateResult) -> dict[str, np.ndarray]:
    """What a cross-validated design leaves for ensembles: the out-of-fold outputs of the pooled
    rows (``oof``, ``oof_rows``), of the validation rows among them (``val``) and the fold
    models' averaged test outputs (``test``)."""
    oof = result.oof
    rows = oof["rows"]
    val = result.data.splits["val"]
    out = {"oof": oof["oof"], "oof_rows": rows, "val": oof["oof"][np.searchsorted(rows, val)]}
    if oof["test"] is not None:
        out["test"] = oof["test"]
    return out


def retried_trial(study: optuna.Study, trial: optuna.Trial) -> int | None:
    """The number of the trial this one retries (a dead worker's, or an interrupted one)."""
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
    n = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
    return n if n is not None else trial.user_attrs.get("retry_of")


def reconcile_stale(study: optuna.Study, history: HistoryStore, tracker: Any) -> list[int]:
    """Records that disagree with Optuna's final state of their trial (a worker that died: Optuna
    failed its trial as stale; an older autofuse that left a failed trial RUNNING) are rewritten
    in Optuna's state, and their MLflow runs ended to match. Returns their numbers."""
    fixed = reconcile(history, study.study_name, study.get_trials(deepcopy=False))
    for rec in fixed:
        tags = {"autofuse.status": rec.status, "autofuse.reason": rec.reason or ""}
        tracker.end_trial(rec.mlflow_run_id, run_status(rec.status, rec.reason), {}, tags)
    if fixed:
        log.info(
            "study %s: %d trial record(s) repaired to Optuna's state (%s)",
            study.study_name,
            len(fixed),
            ", ".join(f"{r.number}: {r.status}" for r in fixed),
        )
    return [r.number for r in fixed]


def mark_logged(e: BaseException) -> None:
    """Note that ``e``'s traceback is in the log already (see ``workers.QuietOptunaFailures``)."""
    with contextlib.suppress(AttributeError, TypeError):
        e.__autofuse_logged__ = True


__all__ = [
    "TrialExecution",
    "TrialHook",
    "TrialLog",
    "WorkerContext",
    "mark_logged",
    "reconcile_stale",
    "retried_trial",
]
