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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import torch

from autofuse._util import best_first, finite, sort_sign, stable_hash
from autofuse.budget import MIN_FINALIST_EPOCHS, FinalistCost, size_finalists
from autofuse.checkpoints import CheckpointStore
from autofuse.data.splits import cv_folds
from autofuse.encoders import EncoderSpec
from autofuse.errors import ConfigError
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
    "finalist_baseline",
    "tuned",
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
        init = trial.user_attrs.get("init_from")
        state = self.design_state(init) if init is not None else None
        # fine-tuning a trained stage-2 model is short; new fusion layers train the design's epochs
        epochs = design.training.epochs
        training = design.training.model_copy(
            update={
                "seed": seed,
                "encoder_lr_scale": cfg.finetune_lr_scale,
                "epochs": epochs if state is None else min(epochs, cfg.finetune_epochs),
            }
        )
        spec = design.model_copy(update={"encoders": encoders, "training": training})
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
    # modalities and labels in the order their first runs came (the spec's modality order)
    choices: dict[str, dict] = {}
    for t in sorted(done, key=lambda t: t.number):
        u = t.user_attrs["unimodal"]
        choices.setdefault(u["modality"], {}).setdefault(u["label"], None)
    best: dict[str, float] = {}
    sign = 1.0 if st.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
    # a choice's best run, the earliest of equals (stage 1 may tune a choice: autofuse.tuning)
    for t in sorted(done, key=lambda t: (sign * t.value, -t.number)):
        u = t.user_attrs["unimodal"]
        spec = ArchitectureSpec.model_validate(t.user_attrs["spec"])
        enc = spec.encoders[u["modality"]]
        if u.get("source"):
            enc = EncoderSpec(
                name=enc.name, mode="frozen", dim=enc.dim, params=enc.params, source=u["source"]
            )
        choices[u["modality"]][u["label"]] = enc
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


#: the study attribute with stage 3's size (designs x seeds) and why
FINALIST_PLAN = "finalist_plan"


def enqueue_finalists(
    st: optuna.Study, space: SearchSpace, left_s: float | None, rows: dict[str, Any]
) -> int:
    """Enqueue a round of stage 3; returns how many finalist trials are queued (0: the stage is
    over). Called until it returns 0, so time a round leaves over buys more seeds or designs.

    The designs, ranked once: the best ``finalists`` fusion designs and the best hand-designed
    baseline (second in line: with two designs or more the search's pick is compared with it
    under the same protocol), ``seeds`` each, then as many designs again (the next best) for
    time later rounds have left. The first round queues as many designs x seeds as
    ``left_s`` seconds fit at :data:`~autofuse.budget.MIN_FINALIST_EPOCHS` epochs each, from each
    design's measured epoch cost (:func:`design_cost`; ``rows``: ``{"fusion_rows": ...}``, the share
    ``stages.fusion_rows``), or skips the stage. A later round adds the (design, seed) pairs not
    run yet, more designs before more seeds, as long as each fits the time left (a design's
    finalists measured so far give its cost). The plan is the study attribute
    :data:`FINALIST_PLAN`."""
    cfg = space.stages
    plan = dict(st.user_attrs.get(FINALIST_PLAN) or {})
    by_number = {t.number: t for t in st.get_trials(deepcopy=False)}
    if "order" not in plan:  # the first round's designs, then as many again for later rounds
        first = _finalist_designs(st, cfg.finalists)
        more = [n for n in _finalist_designs(st, 2 * cfg.finalists) if n not in first]
        plan |= {"order": first + more, "first": len(first)}
    order = [by_number[n] for n in plan["order"]]
    done = st.get_trials(deepcopy=False, states=(TS.COMPLETE,))
    costs = {t.number: design_cost(done, t, rows) for t in order}
    have = {
        (int(t.user_attrs["finalist_of"]), int(t.user_attrs["seed"])): t
        for t in by_number.values()
        if stage_of(t) == FINALIST
    }
    if not have:  # the first round: a designs x seeds block that fits, or none
        first = order[: plan.get("first", len(order))]
        sized = size_finalists([costs[t.number] for t in first], cfg.seeds, left_s)
        pairs = [(t, seed) for t in first[: sized.designs] for seed in range(sized.seeds)]
        plan |= {"note": sized.note, "skipped": sized.skipped, "left_s": left_s, "rounds": 1}
    elif plan.get("skipped") or left_s is None:  # no budget: the first round was the stage
        pairs = []
        plan.setdefault("ended", "every finalist asked for has run")
    else:  # a later round: what still fits, more designs before more seeds
        spent, pairs = 0.0, []
        for seed in range(cfg.seeds):
            for t in order:
                if (t.number, seed) in have:
                    continue
                need = _measured_finalist_s(have, t.number) or costs[t.number].trial_s(
                    MIN_FINALIST_EPOCHS
                )
                if spent + need <= left_s:
                    spent += need
                    pairs.append((t, seed))
        if pairs:
            plan["rounds"] = int(plan.get("rounds", 1)) + 1
        elif len(have) >= len(order) * cfg.seeds:
            plan["ended"] = (
                f"every finalist it may run has run ({len(order)} designs: stages.finalists, the "
                f"best baseline and as many designs again for time left over, x {cfg.seeds} seeds)"
            )
        else:
            plan["ended"] = f"no further finalist fits the {left_s or 0:.0f} s left"
    _queue_finalists(st, pairs, order)
    queued = have | {(t.number, seed): None for t, seed in pairs}
    plan["designs"] = len({d for d, _ in queued})
    plan["seeds"] = max((seed + 1 for _, seed in queued), default=0)
    plan["trials"] = len(queued)
    st.set_user_attr(FINALIST_PLAN, plan)
    return sum(
        t.state == TS.WAITING and stage_of(t) == FINALIST for t in st.get_trials(deepcopy=False)
    )


def _finalist_designs(st: optuna.Study, n: int) -> list[int]:
    """The fusion designs stage 3 fine-tunes, best first: the top ``n`` (a design cut short,
    low fidelity, ranks after every complete one) and the best baseline second."""
    done = [
        t
        for t in st.get_trials(deepcopy=False, states=(TS.COMPLETE,))
        if stage_of(t) == FUSION and finite(t.value)
    ]
    sign = sort_sign(st.direction.name.lower())
    ranked = sorted(
        done, key=lambda t: (bool(t.user_attrs.get("low_fidelity")), sign * t.value, _tie_loss(t))
    )
    top = ranked[:n]
    baseline = next((t for t in ranked if "baseline" in t.user_attrs), None)
    if baseline is not None and baseline not in top and top:
        top.insert(1, baseline)
    return [t.number for t in top]


def _measured_finalist_s(have: dict, design: int) -> float | None:
    """The median wall time of a design's finished finalists (None before one finished)."""
    times = [
        float(t.user_attrs.get("trial_time_s") or 0.0)
        for (d, _), t in have.items()
        if d == design and t is not None and t.state == TS.COMPLETE
    ]
    return float(np.median(times)) if times else None


def _queue_finalists(st: optuna.Study, pairs: list[tuple[Any, int]], order: list) -> None:
    origins = _origins(st)
    best_baseline = next((t for t in order if "baseline" in t.user_attrs), None)
    for t, seed in pairs:
        spec = t.user_attrs["spec"]
        extra = {"finalist_baseline": t.user_attrs["baseline"]} if t is best_baseline else {}
        if not _cross_validated(t):  # its head never saw the validation rows: start from it
            extra["init_from"] = t.number
        st.enqueue_trial(
            {},
            user_attrs={
                "stage": FINALIST,
                "finalist_of": t.number,
                "seed": seed,
                "spec_fixed": spec,
                "origins": {m: origins.get(e.get("source")) for m, e in spec["encoders"].items()},
                **extra,
            },
        )


def _cross_validated(t: Any) -> bool:
    """Whether a stage-2 design was ranked by cross-validation. Its kept weights are fold 1's
    model, which trained on most of the validation rows: a finalist starting from them would
    early-stop, and be scored, on rows it has seen. Its finalists start from the stage-1
    encoders with new fusion layers and head, initialised by the seed."""
    return (t.user_attrs.get("selection") or {}).get("kind") == "cv"


def design_cost(done: list, design: Any, rows: dict[str, Any]) -> FinalistCost:
    """What one end-to-end epoch of a stage-2 design costs in stage 3, from measured times:
    each of its encoders' stage-1 run (seconds per epoch, scaled from the rows it trained on to
    every training row) plus the design's own fusion head; the trial's fixed cost is the
    largest of those runs' time outside training (building, evaluating, recording)."""
    by_source, by_label = {}, {}
    for t in done:
        u = t.user_attrs.get("unimodal") if stage_of(t) == UNIMODAL else None
        if u:
            by_source.setdefault(u.get("source"), t)
            by_label.setdefault((u["modality"], u["label"]), t)
    epoch_s, overhead_s = _per_epoch(design, 1.0), 0.0  # the head (per fold: epochs add up)
    spec = ArchitectureSpec.model_validate(design.user_attrs["spec"])
    for m, enc in spec.encoders.items():
        run = by_source.get(enc.source) if enc.source else by_label.get((m, encoder_label(spec, m)))
        if run is None:
            continue
        # a trained encoder saw 1 - fusion_rows of the training rows; stage 3 sees them all
        scale = 1.0 / (1.0 - rows["fusion_rows"]) if enc.source else 1.0
        epoch_s += _per_epoch(run, scale)
        total = float(run.user_attrs.get("trial_time_s") or 0.0)
        overhead_s = max(overhead_s, total - float(run.user_attrs.get("train_time_s") or 0.0))
    return FinalistCost(epoch_s=epoch_s, overhead_s=overhead_s)


def _per_epoch(t: Any, scale: float) -> float:
    seconds = float(t.user_attrs.get("train_time_s") or 0.0)
    return scale * seconds / max(1, int(t.user_attrs.get("epochs_run") or 1))


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


def finalist_outputs(result: CandidateResult, device: torch.device) -> dict[str, np.ndarray]:
    """A finalist model's raw outputs on the validation and test rows (ensemble selection)."""
    data = result.data
    return {s: predict_outputs(result.model, data, data.splits[s], device) for s in ("val", "test")}


__all__ = [
    "FINALIST",
    "FINALIST_PLAN",
    "FUSION",
    "STAGES",
    "UNIMODAL",
    "StagePlan",
    "Stages",
    "design_cost",
    "enqueue_finalists",
    "enqueue_unimodal",
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
