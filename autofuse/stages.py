"""The staged search: train encoders once, search fusion designs on their features, then
fine-tune, re-seed and ensemble the finalists (MFAS / BM-NAS search over features of unimodal
encoders trained once; AutoGluon-style greedy ensemble selection at the end).

All three stages are trials of one Optuna study (user attribute ``stage``), recorded in SQL and
MLflow like any trial::

    unimodal   one trial per modality and encoder choice of the space: the encoder is trained
               once with a linear head (the unimodal baselines); its outputs for every row and its
               weights are kept in the feature cache under a key of the training run, so a later
               study on the same dataset reuses them
    fusion     the fusion search: family, method, point, hyperparameters, each modality's stage-1
               encoder and the modality subset; a trial trains only the fusion and the head on
               the stored features (seconds); multi-fidelity pruning over epochs
    finalist   the best ``finalists`` designs fine-tuned end to end (stage-1 encoders unfrozen at
               a lower learning rate, starting from the stage-2 weights), ``seeds`` times each

**Honest features.** An encoder's outputs for the rows it was trained on are over-fit: a fusion
head trained on them learns to trust whichever modality memorised best. Out-of-fold features do
not solve this for embeddings: K fold models embed into K different spaces, and the validation
and test rows would be embedded by yet another model. So a stage-1 encoder trains on a share of
the training rows (``1 - stages.fusion_rows``) and stage-2 heads train on the rest, whose
features are what unseen rows look like; stage 3 then fine-tunes the finalists on every training
row. Frozen (pretrained) encoders never saw the data, so heads over them use every training row.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from autofuse._util import best_first, better, finite, sort_sign, stable_hash
from autofuse.checkpoints import CheckpointStore
from autofuse.data.splits import cv_folds
from autofuse.encoders import EncoderSpec
from autofuse.ensemble import combine, greedy_selection
from autofuse.errors import ConfigError
from autofuse.export import write_ensemble_export
from autofuse.metrics import compute_metrics
from autofuse.runner import CandidateResult, CandidateRunner
from autofuse.space import SearchSpace, suggest_fusion_spec, suggest_spec, unimodal_specs
from autofuse.spec import ArchitectureSpec
from autofuse.train import predict_outputs

log = logging.getLogger(__name__)

UNIMODAL, FUSION, FINALIST = "unimodal", "fusion", "finalist"
STAGES = (UNIMODAL, FUSION, FINALIST)
#: bumped when the meaning of a stage-1 training run changes (its cache key includes it)
STAGE1_VERSION = 1

TS = optuna.trial.TrialState


def stage_of(trial: Any) -> str:
    """A trial's stage (``fusion`` for trials of a single-stage search and sampled ones)."""
    return trial.user_attrs.get("stage", FUSION)


def finished_in_stage(st: optuna.Study, stage: str) -> int:
    """Trials of ``stage`` that ended (complete or pruned)."""
    return sum(
        t.state in (TS.COMPLETE, TS.PRUNED) and stage_of(t) == stage
        for t in st.get_trials(deepcopy=False)
    )


#: the user attributes that say what a queued trial is (its stage and fixed design); a retry
#: of an interrupted trial is queued with them, so it runs in the same stage
QUEUE_KEYS = (
    "stage",
    "unimodal_label",
    "spec_fixed",
    "finalist_of",
    "seed",
    "init_from",
    "origins",
    "baseline",
    "coverage",
)
#: the reason of a queued trial that never ran because its stage had ended
SKIPPED = "skipped"


def queue_attrs(trial: Any) -> dict[str, Any]:
    """What a copy of ``trial`` needs to be the same queued trial (:data:`QUEUE_KEYS`)."""
    return {k: trial.user_attrs[k] for k in QUEUE_KEYS if k in trial.user_attrs}


def is_queued_stage(stage: str | None) -> bool:
    """Stages whose trials are all enqueued up front (stage 1: one per encoder choice, stage 3:
    finalists x seeds): a worker runs what is queued and never samples a trial of its own."""
    return stage in (UNIMODAL, FINALIST)


def skip_queued(st: optuna.Study, stage: str, why: str) -> list[int]:
    """End the still-queued (WAITING) trials of ``stage``: the stage is over, so they never run
    (a later stage's worker would otherwise pop them first: Optuna's queue is one list). They
    end FAIL with the reason :data:`SKIPPED`; a resumed study queues a skipped baseline again.
    The caller holds the study lock. Returns their numbers."""
    storage, out = st._storage, []
    for t in st.get_trials(deepcopy=False, states=(TS.WAITING,)):
        if stage_of(t) != stage:
            continue
        storage.set_trial_user_attr(t._trial_id, "reason", SKIPPED)
        storage.set_trial_user_attr(t._trial_id, "error", why)
        if storage.set_trial_state_values(t._trial_id, TS.FAIL):
            out.append(t.number)
    if out:
        log.info(
            "study %s: %d queued %s trial(s) skipped (%s)", st.study_name, len(out), stage, why
        )
    return out


def is_skipped(trial: Any) -> bool:
    return trial.state == TS.FAIL and trial.user_attrs.get("reason") == SKIPPED


# ---- honest rows ---------------------------------------------------------------------------------


def split_train_rows(
    train: np.ndarray,
    y: np.ndarray,
    task: str,
    fusion_share: float,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(encoder rows, fusion rows)``: a seeded split of the training rows, stratified by class
    for classification, ``fusion_share`` of them for the fusion heads. With ``groups`` (the
    dataset's group column) whole groups go to one side: an encoder that saw a subject's other
    windows would give the fusion heads memorised features of that subject."""
    rng = np.random.default_rng(seed)
    train = np.asarray(train)
    if groups is not None:
        return _split_groups(train, np.asarray(groups)[train], fusion_share, rng)
    if task == "classification":
        groups = [train[y[train] == c] for c in np.unique(y[train])]
    else:
        groups = [train]
    enc, fus = [], []
    for g in groups:
        g = g[rng.permutation(len(g))]
        k = int(round(len(g) * fusion_share))
        k = min(max(k, 1), len(g) - 1) if len(g) > 1 else 0
        fus.append(g[:k])
        enc.append(g[k:])
    return np.sort(np.concatenate(enc)), np.sort(np.concatenate(fus))


def _split_groups(
    train: np.ndarray, groups: np.ndarray, fusion_share: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Whole groups, in a seeded order, to the fusion rows until they hold ``fusion_share`` of
    the rows (at least one group each side when there are two or more)."""
    names, sizes = np.unique(groups, return_counts=True)
    order = rng.permutation(len(names))
    target, taken, fus = fusion_share * len(train), 0, []
    for i in order[: max(len(names) - 1, 0)]:
        if fus and taken + sizes[i] / 2 > target:
            break
        fus.append(names[i])
        taken += sizes[i]
    in_fus = np.isin(groups, fus)
    return np.sort(train[~in_fus]), np.sort(train[in_fus])


def encoder_label(spec: ArchitectureSpec, m: str) -> str:
    e = spec.encoders[m]
    return f"{e.name}/{e.mode}"


def trains_encoder(spec: ArchitectureSpec) -> bool:
    return any(e.mode != "frozen" for e in spec.encoders.values())


# ---- what one trial trains -----------------------------------------------------------------------


@dataclass
class StagePlan:
    """What a trial trains: its spec, rows and starting weights, and what it records."""

    stage: str
    spec: ArchitectureSpec
    record: dict[str, Any] = field(default_factory=dict)
    train_rows: np.ndarray | None = None
    init_state: dict[str, torch.Tensor] | None = None
    #: stage 1: the key of the training run in the feature cache
    stage1_key: str | None = None
    #: stage 1: an earlier study's identical run (its record), reused without training
    reused: dict[str, Any] | None = None
    #: the time limit applies from the second epoch (a modality's first encoder must give one)
    first_epoch_free: bool = False
    #: stage 2 with ``stages.folds`` > 1: each fold's held-out rows (the design is ranked by
    #: cross-validation over them, :meth:`autofuse.runner.CandidateRunner.run_cv`)
    folds: list[np.ndarray] | None = None

    @property
    def prunable(self) -> bool:
        """Only fusion-search trials report to the pruner (the others must finish)."""
        return self.stage == FUSION


class Stages:
    """Stage logic of one worker (its runner, space and study)."""

    def __init__(
        self,
        study: optuna.Study,
        space: SearchSpace,
        runner: CandidateRunner,
        store: CheckpointStore,
    ) -> None:
        self.study, self.space, self.runner, self.store = study, space, runner, store
        self._choices: tuple[dict[str, dict], str] | None = None
        cfg = space.stages
        t = runner.template
        self.encoder_rows, self.fusion_rows = split_train_rows(
            t.splits["train"],
            t.y_raw,
            runner.task,
            cfg.fusion_rows,
            groups=getattr(runner.ds, "groups", lambda: None)(),
        )
        self._folds: dict[bool, list[np.ndarray]] = {}

    @property
    def modalities(self) -> dict[str, str]:
        ds = self.runner.ds
        return {m: ds.modality_type(m) for m in ds.modality_names}

    def plan(self, trial: optuna.Trial) -> StagePlan:
        stage = stage_of(trial)
        if not self.space.stages.enabled:
            return StagePlan(FUSION, suggest_spec(trial, self.space, self.modalities))
        if stage == UNIMODAL:
            return self._unimodal(trial)
        if stage == FINALIST:
            return self._finalist(trial)
        return self._fusion(trial)

    # ---- stage 1 ---------------------------------------------------------------------------------
    def stage1_key(self, m: str, spec: ArchitectureSpec) -> str:
        """The feature-cache key of a stage-1 training run: dataset, modality, encoder, its
        preprocessing, the training settings and the honest split."""
        enc = spec.encoders[m]
        return stable_hash(
            {
                "stage1": STAGE1_VERSION,
                "dataset": self.runner.ds.fingerprint(),
                "modality": m,
                "spec": spec.model_dump(mode="json"),
                "state": self.runner.modality_input(m, enc)[1]["state"],
                "fusion_rows": self.space.stages.fusion_rows,
                # the honest split keeps groups whole (a dataset with a group column)
                **({"grouped": True} if self.runner.ds.groups() is not None else {}),
            }
        )

    def _unimodal(self, trial: optuna.Trial) -> StagePlan:
        spec = ArchitectureSpec.model_validate(trial.user_attrs["spec_fixed"])
        (m,) = spec.encoders
        record = {"unimodal": {"modality": m, "label": encoder_label(spec, m)}}
        first = not any(
            stage_of(t) == UNIMODAL and t.user_attrs.get("unimodal", {}).get("modality") == m
            for t in self.study.get_trials(deepcopy=False, states=(TS.COMPLETE,))
        )
        if not trains_encoder(spec):  # a frozen encoder: its features are honest already
            return StagePlan(UNIMODAL, spec, record, first_epoch_free=first)
        key = self.stage1_key(m, spec)
        record["unimodal"]["source"] = key
        return StagePlan(
            UNIMODAL,
            spec,
            record,
            train_rows=self.encoder_rows,
            stage1_key=key,
            reused=self.runner.stage1_record(key),
            first_epoch_free=first,
        )

    def after_unimodal(self, plan: StagePlan, result: CandidateResult) -> None:
        """Keep a trained encoder's outputs and weights for stage 2 (and later studies)."""
        if plan.stage1_key is None:
            return
        (m,) = plan.spec.encoders
        rec = {
            "val_metrics": result.val_metrics,
            "test_metrics": result.test_metrics,
            "history": result.history,
            "n_params": result.n_params,
            "latency_ms": result.latency_ms,
            "train_time_s": result.train_time_s,
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "spec": plan.spec.model_dump(mode="json"),
        }
        self.runner.store_stage1(
            plan.stage1_key, m, plan.spec.encoders[m], result.model.encoders[m], rec
        )

    # ---- stage 2 ---------------------------------------------------------------------------------
    def choices(self) -> tuple[dict[str, dict], str]:
        """Per modality, the stage-1 encoders a fusion trial may use (label -> EncoderSpec), and
        the modality of the best unimodal model (kept when a subset would be empty)."""
        if self._choices is None:
            self._choices = fusion_choices(self.study)
        return self._choices

    def _fusion(self, trial: optuna.Trial) -> StagePlan:
        choices, best = self.choices()
        if not choices:
            raise RuntimeError("no stage-1 encoder finished: the fusion search has nothing to fuse")
        spec = suggest_fusion_spec(trial, self.space, choices, best)
        trained = any(e.source is not None for e in spec.encoders.values())
        rows = self.fusion_rows if trained else None
        folds = self.folds(trained) if self.space.stages.folds > 1 else None
        plan = StagePlan(FUSION, spec, {"kept": sorted(spec.encoders)}, train_rows=rows)
        plan.folds = folds
        return plan

    def folds(self, trained: bool) -> list[np.ndarray]:
        """The cross-validation folds of stage 2: the rows a fusion head may learn from (the
        fusion rows when a stage-1 encoder trained on the others, every training row over
        frozen pretrained encoders) and the validation rows, in ``stages.folds`` folds,
        stratified by class, grouped by the dataset's group column. The test rows are in none."""
        if trained not in self._folds:
            t = self.runner.template
            learn = self.fusion_rows if trained else t.splits["train"]
            pool = np.sort(np.concatenate([learn, t.splits["val"]]))
            groups = getattr(self.runner.ds, "groups", lambda: None)()
            self._folds[trained] = cv_folds(
                pool, t.y_raw, self.runner.task, self.space.stages.folds, groups=groups
            )
        return self._folds[trained]

    # ---- stage 3 ---------------------------------------------------------------------------------
    def _finalist(self, trial: optuna.Trial) -> StagePlan:
        of, seed = int(trial.user_attrs["finalist_of"]), int(trial.user_attrs["seed"])
        design = ArchitectureSpec.model_validate(trial.user_attrs["spec_fixed"])
        origins = {
            m: e for m, e in (trial.user_attrs.get("origins") or {}).items() if e is not None
        }
        encoders = {}
        for m, e in design.encoders.items():
            origin = origins.get(m)
            if e.source is not None and origin is not None and origin["mode"] != "frozen":
                e = e.model_copy(update={"mode": origin["mode"]})  # unfrozen, from stage-1 weights
            encoders[m] = e
        cfg = self.space.stages
        training = design.training.model_copy(
            update={
                "seed": seed,
                "encoder_lr_scale": cfg.finetune_lr_scale,
                "epochs": min(design.training.epochs, cfg.finetune_epochs),
            }
        )
        spec = design.model_copy(update={"encoders": encoders, "training": training})
        init = trial.user_attrs.get("init_from")
        state = self.design_state(init) if init is not None else None
        return StagePlan(FINALIST, spec, {"finalist_of": of, "seed": seed}, init_state=state)

    def design_state(self, number: int) -> dict[str, torch.Tensor] | None:
        """The stage-2 weights a finalist starts from (fusion, head, stage-1 encoders)."""
        try:
            return self.store.load_finalist(number)[2]
        except ConfigError as e:  # no checkpoint: fine-tune from the stage-1 encoders only
            log.warning("finalist: no stage-2 weights of trial %d (%s)", number, e)
            return None


# ---- study-level: what each stage enqueues and decides ---------------------------------------


def enqueue_unimodal(st: optuna.Study, space: SearchSpace, modalities: dict[str, str]) -> int:
    """Enqueue the stage-1 trials not yet in the study; returns the stage's size."""
    have = {
        t.user_attrs.get("unimodal_label")
        for t in st.get_trials(deepcopy=False)
        if stage_of(t) == UNIMODAL
    }
    specs = unimodal_specs(space, modalities)
    for m, spec in specs:
        label = f"{m}:{encoder_label(spec, m)}"
        if label not in have:
            st.enqueue_trial(
                {},
                user_attrs={
                    "stage": UNIMODAL,
                    "unimodal_label": label,
                    "spec_fixed": spec.model_dump(mode="json"),
                },
            )
    return len(specs)


def fusion_choices(st: optuna.Study) -> tuple[dict[str, dict], str]:
    """Stage-1 encoders that finished, per modality (label -> the EncoderSpec stage 2 uses)."""
    done = [
        t for t in st.get_trials(deepcopy=False, states=(TS.COMPLETE,)) if stage_of(t) == UNIMODAL
    ]
    choices: dict[str, dict] = {}
    best: dict[str, float] = {}
    sign = 1.0 if st.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
    for t in sorted(done, key=lambda t: t.number):
        u = t.user_attrs["unimodal"]
        spec = ArchitectureSpec.model_validate(t.user_attrs["spec"])
        enc = spec.encoders[u["modality"]]
        if u.get("source"):
            enc = EncoderSpec(
                name=enc.name, mode="frozen", dim=enc.dim, params=enc.params, source=u["source"]
            )
        choices.setdefault(u["modality"], {})[u["label"]] = enc
        best[u["modality"]] = max(best.get(u["modality"], -math.inf), sign * t.value)
    fallback = max(best, key=best.get) if best else ""
    return choices, fallback


def fusion_baselines(
    st: optuna.Study, space: SearchSpace, baseline_params: list[tuple[str, dict]], room: int
) -> int:
    """Enqueue the hand-designed baselines for stage 2 (every modality, each with its best
    stage-1 encoder), once each, at most ``room`` of them (the fusion search's trials left: a
    stage never queues more than its target); a baseline skipped earlier (its stage ended before
    it ran) is queued again. Returns how many were queued."""
    have = {
        t.user_attrs["baseline"]
        for t in st.get_trials(deepcopy=False)
        if stage_of(t) == FUSION and "baseline" in t.user_attrs and not is_skipped(t)
    }
    todo = [(n, p) for n, p in baseline_params if n not in have][: max(0, room)]
    if not todo:
        return 0
    choices, _ = fusion_choices(st)
    best_label = _best_labels(st)
    for name, params in todo:
        p = {k: v for k, v in params.items() if not k.startswith("enc.")}
        for m in choices:
            if space.stages.subset and len(choices) > 1:
                p[f"keep.{m}"] = True
            if m in best_label:
                p[f"enc.{m}"] = best_label[m]
        st.enqueue_trial(p, user_attrs={"baseline": name, "stage": FUSION})
    return len(todo)


def _best_labels(st: optuna.Study) -> dict[str, str]:
    done = [
        t for t in st.get_trials(deepcopy=False, states=(TS.COMPLETE,)) if stage_of(t) == UNIMODAL
    ]
    direction = st.direction.name.lower()
    out: dict[str, str] = {}
    for t in best_first(done, lambda t: t.value, direction):
        u = t.user_attrs["unimodal"]
        out.setdefault(u["modality"], u["label"])
    return out


def enqueue_finalists(st: optuna.Study, space: SearchSpace) -> list[int]:
    """Enqueue stage 3 for the best ``finalists`` fusion designs (``seeds`` each), once; returns
    the designs' trial numbers."""
    cfg = space.stages
    existing = [t for t in st.trials if stage_of(t) == FINALIST]
    if existing:
        return sorted({int(t.user_attrs["finalist_of"]) for t in existing})
    done = [
        t
        for t in st.get_trials(deepcopy=False, states=(TS.COMPLETE,))
        if stage_of(t) == FUSION and finite(t.value)
    ]
    sign = sort_sign(st.direction.name.lower())
    top = sorted(done, key=lambda t: (sign * t.value, _tie_loss(t)))[: cfg.finalists]
    origins = _origins(st)
    for t in top:
        spec = t.user_attrs["spec"]
        for seed in range(cfg.seeds):
            st.enqueue_trial(
                {},
                user_attrs={
                    "stage": FINALIST,
                    "finalist_of": t.number,
                    "seed": seed,
                    "init_from": t.number,
                    "spec_fixed": spec,
                    "origins": {
                        m: origins.get(e.get("source")) for m, e in spec["encoders"].items()
                    },
                },
            )
    return [t.number for t in top]


def _tie_loss(t: Any) -> float:
    """A cross-validated design's mean proper loss (log-loss, MSE): designs with the same
    metric (a saturated accuracy) are ranked by it; ``inf`` without one."""
    loss = (t.user_attrs.get("selection") or {}).get("loss_mean")
    return float(loss) if finite(loss) else math.inf


def _origins(st: optuna.Study) -> dict[str, dict]:
    """stage-1 source key -> the encoder spec it was trained as (its trainable mode)."""
    out = {}
    for t in st.get_trials(deepcopy=False, states=(TS.COMPLETE,)):
        if stage_of(t) == UNIMODAL and (t.user_attrs.get("unimodal") or {}).get("source"):
            spec = t.user_attrs["spec"]
            (enc,) = spec["encoders"].values()
            out[t.user_attrs["unimodal"]["source"]] = enc
    return out


@dataclass
class Winner:
    """The study's result: one design's best seed, or a greedy ensemble of finalist models."""

    kind: str  # "single" | "ensemble"
    trials: list[int]
    weights: list[float]
    design: int  # the winning stage-2 design
    val: float
    test: dict[str, float]
    why: str
    designs: list[dict] = field(default_factory=list)  # per finalist design: seeds' values
    #: what ``val`` is: "validation" (a finalist's own validation metric), "out-of-sample" (an
    #: ensemble whose weights were fitted on other rows' out-of-fold outputs) or "in-sample" (an
    #: ensemble chosen and scored on the same validation outputs: ``stages.folds: 1``)
    val_kind: str = "validation"
    #: the winning design's cross-validated selection estimate (``stages.folds`` > 1)
    selection: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


#: a design within this many standard errors of the best cross-validated design is as good:
#: the simplest of them wins (Breiman's one-standard-error rule)
ONE_SE = 1.0


def choose_winner(
    st: optuna.Study,
    store: Any,
    task: str,
    y_raw: np.ndarray,
    splits: dict,
    metric: str,
    ensemble: bool = True,
) -> Winner | None:
    """The winning design among the finalists, then a greedy ensemble of the finalist models
    when it beats it (``ensemble``).

    Designs ranked by cross-validation (``stages.folds`` > 1): the one-standard-error rule. The
    best design's mean over folds minus one standard error of that mean (its fold-to-fold std
    over sqrt(folds)) is the bar; of the designs at or above it, the one with the fewest
    parameters wins, then the lowest latency (an advantage inside the fold noise does not buy
    a bigger model). The ensemble's weights are fitted (Caruana) on the designs' out-of-fold
    outputs of the pooled rows outside the validation split, and the weighted finalist models
    are scored on the validation rows: a figure the weights never saw.

    Designs ranked on the validation split (``stages.folds: 1``): the best mean validation
    metric over seeds (ties: fewer parameters, then lower latency), and an ensemble chosen and
    scored on the same validation outputs (its figure is in-sample, and labelled so)."""
    direction = st.direction.name.lower()
    sign = sort_sign(direction)
    trials = {t.number: t for t in st.get_trials(deepcopy=False)}
    done = [
        t
        for t in trials.values()
        if t.state == TS.COMPLETE and stage_of(t) == FINALIST and finite(t.value)
    ]
    if not done:
        return None
    by_design: dict[int, list] = {}
    for t in done:
        by_design.setdefault(int(t.user_attrs["finalist_of"]), []).append(t)
    designs = []
    for d, ts in by_design.items():
        vals = [t.value for t in ts]
        sel = trials[d].user_attrs.get("selection") if d in trials else None
        designs.append(
            {
                "design": d,
                "trials": [t.number for t in ts],
                "values": vals,
                "mean": float(np.mean(vals)),
                "std": float(np.std(vals)),
                "n_params": min(t.user_attrs.get("n_params") or 0 for t in ts),
                "latency_ms": min(t.user_attrs.get("latency_ms") or 0.0 for t in ts),
                **({"cv": _cv_summary(sel)} if sel and sel.get("kind") == "cv" else {}),
            }
        )
    cv = all("cv" in g for g in designs)
    if cv:
        win, why = _one_se(designs, sign, metric)
    else:
        designs.sort(key=lambda g: (sign * g["mean"], g["n_params"], g["latency_ms"]))
        win = designs[0]
        why = (
            f"design {win['design']} has the best mean validation {metric} over its seeds "
            f"({win['mean']:.4f} +/- {win['std']:.4f})"
        )
    best_seed = min(by_design[win["design"]], key=lambda t: (sign * t.value, t.number))
    single = Winner(
        "single",
        [best_seed.number],
        [1.0],
        win["design"],
        float(best_seed.value),
        dict(best_seed.user_attrs.get("test_metrics") or {}),
        f"{why}; its best seed is trial {best_seed.number}",
        designs,
        selection=win.get("cv"),
    )
    if not ensemble:
        single.why += "; no ensemble (stages.ensemble: false)"
        return single
    if cv:
        return _oof_ensemble(single, by_design, store, task, y_raw, splits, metric, direction)
    return _validation_ensemble(single, done, store, task, y_raw, splits, metric, direction)


def _cv_summary(sel: dict) -> dict:
    n = int(sel.get("folds_done") or len(sel.get("scores") or []) or 1)
    return {
        "mean": float(sel["mean"]),
        "std": float(sel["std"]),
        "folds": n,
        # one fold (a trial stopped by its time limit) says nothing of the fold-to-fold noise
        "se": float(sel["std"]) / math.sqrt(n) if n > 1 else None,
        "loss_mean": sel.get("loss_mean"),
    }


def _one_se(designs: list[dict], sign: float, metric: str) -> tuple[dict, str]:
    """The simplest design within one standard error of the best cross-validated one (a best
    design with one fold done borrows the median standard error of the others)."""
    best = min(designs, key=lambda g: (sign * g["cv"]["mean"], g["n_params"]))
    known = [g["cv"]["se"] for g in designs if g["cv"]["se"] is not None]
    se = (
        best["cv"]["se"]
        if best["cv"]["se"] is not None
        else (float(np.median(known)) if known else 0.0)
    )
    best["cv"]["se"] = se
    bar = best["cv"]["mean"] + sign * ONE_SE * se  # sign < 0: maximise
    close = [g for g in designs if sign * g["cv"]["mean"] <= sign * bar + 1e-12]
    win = min(close, key=lambda g: (g["n_params"], g["latency_ms"], sign * g["cv"]["mean"]))
    c = win["cv"]
    why = (
        f"design {win['design']}: cross-validated {metric} {c['mean']:.4f} +/- {c['std']:.4f} "
        f"over {c['folds']} folds (selection estimate)"
    )
    if win is best:
        why += f", the best of {len(designs)} finalist designs"
    else:
        why += (
            f", within one standard error of the best design {best['design']} "
            f"({best['cv']['mean']:.4f}, SE {best['cv']['se']:.4f}) with fewer parameters "
            f"({win['n_params']:,} against {best['n_params']:,}): one-standard-error rule"
        )
    return win, why


def select_ensemble(
    fit_outputs: list[np.ndarray],
    y_fit: np.ndarray,
    score_outputs: list[np.ndarray],
    y_score: np.ndarray,
    task: str,
    metric: str,
    direction: str,
) -> tuple[list[float], float]:
    """Greedy ensemble weights fitted on ``fit_outputs`` (out-of-fold outputs of rows outside
    the scoring rows), and the weighted ensemble's ``metric`` on ``score_outputs``: the score
    never comes from the outputs the weights were chosen on."""
    weights, _ = greedy_selection(fit_outputs, y_fit, task, metric, direction)
    used = [(o, w) for o, w in zip(score_outputs, weights, strict=True) if w > 0]
    out = combine([o for o, _ in used], [w for _, w in used], task)
    return weights, float(compute_metrics(task, y_score, out)[metric])


def _oof_ensemble(
    single: Winner,
    by_design: dict[int, list],
    store: Any,
    task: str,
    y_raw: np.ndarray,
    splits: dict,
    metric: str,
    direction: str,
) -> Winner:
    """A greedy ensemble of the finalist designs (each its best seed's model), weighted on the
    designs' out-of-fold outputs outside the validation rows, scored on the validation rows."""
    sign = sort_sign(direction)
    members = {d: min(ts, key=lambda t: (sign * t.value, t.number)) for d, ts in by_design.items()}
    readable = store.readable_outputs([*members, *(t.number for t in members.values())])
    usable = [d for d, t in sorted(members.items()) if t.number in readable and d in readable]
    usable = [d for d in usable if "oof" in readable[d]]
    if len(usable) < 2:
        single.why += "; no ensemble (fewer than 2 finalist designs with out-of-fold outputs)"
        return single
    rows = readable[usable[0]]["oof_rows"]
    fit = ~np.isin(rows, splits["val"])
    if not fit.any() or any(not np.array_equal(readable[d]["oof_rows"], rows) for d in usable):
        single.why += "; no ensemble (the designs' out-of-fold rows differ)"
        return single
    weights, score = select_ensemble(
        [readable[d]["oof"][fit] for d in usable],
        y_raw[rows[fit]],
        [readable[members[d].number]["val"] for d in usable],
        y_raw[splits["val"]],
        task,
        metric,
        direction,
    )
    if not better(score, single.val, direction) or abs(score - single.val) < 1e-12:
        single.why += (
            f"; the greedy ensemble weighted out of fold ({score:.4f} on validation) did not "
            f"beat it ({single.val:.4f})"
        )
        return single
    used = [(members[d], w) for d, w in zip(usable, weights, strict=True) if w > 0]
    test = _ensemble_test(task, y_raw, splits, [readable[t.number] for t, _ in used], used)
    return Winner(
        "ensemble",
        [t.number for t, _ in used],
        [float(w) for _, w in used],
        single.design,
        score,
        test,
        f"a greedy ensemble of {len(used)} finalist models, weighted on the designs' "
        f"out-of-fold outputs, reaches validation {metric} {score:.4f} (rows the weights never "
        f"saw), better than the single winner ({single.val:.4f}: {single.why})",
        single.designs,
        val_kind="out-of-sample",
        selection=single.selection,
    )


def _validation_ensemble(
    single: Winner,
    done: list,
    store: Any,
    task: str,
    y_raw: np.ndarray,
    splits: dict,
    metric: str,
    direction: str,
) -> Winner:
    """``stages.folds: 1``: a greedy ensemble of every finalist model, chosen on validation."""
    readable = store.readable_outputs(t.number for t in done)  # a damaged file: a warning
    members = [t for t in sorted(done, key=lambda t: t.number) if t.number in readable]
    if len(members) < 2:
        return single
    outs = [readable[t.number] for t in members]
    weights, score = greedy_selection(
        [o["val"] for o in outs], y_raw[splits["val"]], task, metric, direction
    )
    best_single = best_first(members, lambda t: t.value, direction)[0].value
    if not better(score, best_single, direction) or abs(score - best_single) < 1e-12:
        single.why += (
            f"; the greedy ensemble ({score:.4f}) did not beat the best single finalist "
            f"({best_single:.4f}) on validation"
        )
        return single
    used = [(t, w) for t, w in zip(members, weights, strict=True) if w > 0]
    test = _ensemble_test(task, y_raw, splits, [readable[t.number] for t, _ in used], used)
    return Winner(
        "ensemble",
        [t.number for t, _ in used],
        [float(w) for _, w in used],
        single.design,
        float(score),
        test,
        f"a greedy ensemble of {len(used)} finalist models reaches validation {metric} "
        f"{score:.4f} (in-sample: chosen on the same validation outputs), better than the best "
        f"single model ({best_single:.4f})",
        single.designs,
        val_kind="in-sample",
    )


def _ensemble_test(
    task: str, y_raw: np.ndarray, splits: dict, outs: list[dict], used: list
) -> dict[str, float]:
    y_test = y_raw[splits["test"]]
    if not len(y_test):
        return {}
    return compute_metrics(
        task, y_test, combine([o["test"] for o in outs], [w for _, w in used], task)
    )


def export_winner(store: CheckpointStore, winner: Winner, meta: dict[str, Any]) -> Path:
    """Write the winner into ``best/``: the single model, or the ensemble (``ensemble.json`` and
    one full model per member, see :func:`autofuse.export.write_ensemble_export`)."""
    if winner.kind == "single":
        return store.export_best(winner.trials[0])
    with tempfile.TemporaryDirectory(prefix=".members-", dir=store.study_dir) as tmp:
        members = [store.export_full(n, Path(tmp) / f"trial_{n}") for n in winner.trials]
        meta = {**meta, "trials": winner.trials, "why": winner.why}
        write_ensemble_export(store.best_dir, members, winner.weights, meta)
    return store.publish_best()


def finalist_outputs(result: CandidateResult, device: torch.device) -> dict[str, np.ndarray]:
    """A finalist model's raw outputs on the validation and test rows (ensemble selection)."""
    data = result.data
    return {s: predict_outputs(result.model, data, data.splits[s], device) for s in ("val", "test")}


__all__ = [
    "FINALIST",
    "FUSION",
    "STAGES",
    "UNIMODAL",
    "StagePlan",
    "Stages",
    "Winner",
    "choose_winner",
    "select_ensemble",
    "enqueue_finalists",
    "enqueue_unimodal",
    "export_winner",
    "fusion_baselines",
    "finished_in_stage",
    "fusion_choices",
    "is_queued_stage",
    "is_skipped",
    "queue_attrs",
    "skip_queued",
    "split_train_rows",
    "stage_of",
]
