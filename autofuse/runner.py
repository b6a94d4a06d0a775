"""Train one candidate: inputs -> model -> fit -> evaluate, returning a typed result.

:class:`CandidateRunner` is what a worker (and the report's re-evaluation, and export's retrain)
uses to turn an :class:`~autofuse.spec.ArchitectureSpec` into a trained model on one dataset. It
prepares each modality once per process (decoded, normalised inputs for trainable encoders;
cached outputs for frozen encoders) and reuses them across candidates. It knows nothing about
Optuna, SQL or MLflow: the trial execution (:mod:`autofuse.trial`) wires those around it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autofuse._util import atomic_write_dir, first_line
from autofuse.encoders import FeatureCache, PreparedModality, prepare_modality
from autofuse.encoders.cache import CachedFeatures, encoder_features
from autofuse.ensemble import combine
from autofuse.errors import ConfigError, FeatureCostError, MissingFiles
from autofuse.metrics import OBJECTIVES, compute_metrics, proper_loss
from autofuse.model import MultimodalModel, build_model
from autofuse.spec import ArchitectureSpec
from autofuse.storage.artifacts import ArtifactStore
from autofuse.train import (
    TrainData,
    TrialFault,
    count_params,
    evaluate,
    fit,
    measure_latency_ms,
    param_groups,
    predict_outputs,
)
from autofuse.weights import read_weights, save_weights

log = logging.getLogger(__name__)


def resume_problem(resume: dict, model: torch.nn.Module, groups: list[dict]) -> str | None:
    """Why the running checkpoint ``resume`` cannot continue training ``model`` (its weights or
    optimiser state belong to another model), or ``None`` when it can. ``groups``: the optimiser's
    parameter groups as :func:`autofuse.train.fit` makes them."""
    own = model.state_dict()
    for key in ("model", "best_state"):
        state = resume[key]
        if set(state) != set(own):
            return f"holds {key} weights of another model ({len(state)} tensors, not {len(own)})"
        shapes = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
        if shapes:
            return f"holds {key} weights of other shapes (e.g. {shapes[0]})"
    opt = resume["optimizer"]
    try:
        saved = [len(g["params"]) for g in opt["param_groups"]]
        params = [p for g in groups for p in g["params"]]
        moments = [  # exp_avg / exp_avg_sq: the shape of their parameter
            (i, v)
            for i, s in opt["state"].items()
            for v in s.values()
            if isinstance(v, torch.Tensor) and v.dim() > 0
        ]
        fits = saved == [len(g["params"]) for g in groups] and all(
            0 <= i < len(params) and v.shape == params[i].shape for i, v in moments
        )
    except (AttributeError, KeyError, TypeError) as e:
        return f"holds an unusable optimiser state ({first_line(e)})"
    return None if fits else "holds the optimiser state of another model"


def default_device() -> torch.device:
    """CUDA when a GPU is visible, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class PinnedBatches:
    """A prepared modality whose batches are gathered into page-locked memory: on a CUDA device,
    their copies to the device (``make_batch``, ``non_blocking``) overlap the computation."""

    def __init__(self, prepared: PreparedModality) -> None:
        self.prepared = prepared

    def __len__(self) -> int:
        return len(self.prepared)

    def batch(self, idx: torch.Tensor) -> tuple[Any, torch.Tensor]:
        return self.prepared.batch(idx, pin_memory=True)


def trial_inputs(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A trial's inputs on its device: frozen features copied there once (not batch by batch),
    raw inputs for a CUDA device batched into page-locked memory."""
    out = {}
    for m, x in inputs.items():
        if isinstance(x, CachedFeatures):
            out[m] = x.on_device(device)
        elif isinstance(x, PreparedModality) and device.type == "cuda":
            out[m] = PinnedBatches(x)
        else:
            out[m] = x
    return out


@dataclass
class DatasetInfo:
    """What ``build_model`` and ``predict`` need to know about the data a model was trained on.

    Saved next to every spec (``architecture.json``'s ``dataset_info``) as :meth:`to_dict`.
    """

    name: str
    task: str
    classes: list | None
    target_stats: tuple[float, float]
    fingerprint: str
    #: per modality: ``{"type", "state"[, "feature_shape"]}`` (fitted preprocessing state)
    modalities: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def for_dataset(
        cls, ds: Any, target_stats: tuple[float, float], modalities: dict
    ) -> DatasetInfo:
        return cls(
            name=ds.name,
            task=ds.task,
            classes=ds.classes,
            target_stats=tuple(target_stats),
            fingerprint=ds.fingerprint(),
            modalities=modalities,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task": self.task,
            "classes": self.classes,
            "target_stats": list(self.target_stats),
            "fingerprint": self.fingerprint,
            "modalities": self.modalities,
        }


@dataclass
class CandidateResult:
    """One trained and evaluated candidate."""

    spec: ArchitectureSpec
    model: MultimodalModel
    data: TrainData
    dataset_info: dict[str, Any]
    val_metrics: dict[str, float]
    test_metrics: dict[str, float]
    history: list[dict[str, float]]
    best_epoch: int
    epochs_run: int
    epochs_trained: int
    resumed_from_epoch: int
    train_time_s: float
    n_params: int
    latency_ms: float
    #: training stopped at the time limit: the best epoch so far (a low-fidelity result)
    timed_out: bool = False
    #: stage-1 encoder weights a frozen-with-source encoder uses (checkpoints must keep them)
    source_state: dict[str, torch.Tensor] = field(default_factory=dict)
    #: how ``val_metrics`` were measured (:meth:`CandidateRunner.run_cv`: ``kind`` "cv", the
    #: per-fold scores and losses); None: on the validation split
    selection: dict[str, Any] | None = None
    #: K-fold runs: the out-of-fold raw outputs of the pooled rows and the fold models' averaged
    #: test outputs (``{"rows", "oof", "test"}``)
    oof: dict[str, np.ndarray] | None = None

    def metrics_fields(self) -> dict[str, Any]:
        """The result as trial-record fields (what SQL, Optuna and MLflow store)."""
        return {
            "val_metrics": self.val_metrics,
            "test_metrics": self.test_metrics,
            "history": self.history,
            "n_params": self.n_params,
            "latency_ms": self.latency_ms,
            "train_time_s": self.train_time_s,
            "epochs_run": self.epochs_run,
            "best_epoch": self.best_epoch,
            "epochs_trained": self.epochs_trained,
            "resumed_from_epoch": self.resumed_from_epoch or None,
            **({"selection": self.selection} if self.selection else {}),
            **({"low_fidelity": True, "reason": "timeout"} if self.timed_out else {}),
        }


def load_matching(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load the entries of ``state`` that fit ``model`` (same name and shape): a stage-2 design's
    weights into its finalist, whose stage-1 encoders may be built in another mode."""
    own = model.state_dict()
    model.load_state_dict(
        {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}, strict=False
    )


def training_kwargs(t: Any) -> dict[str, Any]:
    """The :func:`autofuse.train.fit` settings of a spec's ``TrainingSpec`` ``t`` (the seed
    aside: a K-fold run seeds each fold)."""
    return {
        "lr": t.lr,
        "weight_decay": t.weight_decay,
        "batch_size": t.batch_size,
        "epochs": t.epochs,
        "patience": t.patience,
        "aux_weight": t.aux_weight,
        "encoder_lr_scale": t.encoder_lr_scale,
    }


class CandidateRunner:
    """Trains candidates on one dataset, reusing prepared inputs and frozen features across trials.

    Args:
        ds: the :class:`~autofuse.data.Dataset`.
        cache_root: the feature cache folder (``trials/cache``).
        device: where candidates train.
        prep_cache: keep decoded inputs on disk under ``cache_root/prep`` (its key ignores the
            split, so a refit on other splits passes ``False``).
        artifacts: the study's artifact store (``--artifacts``): stage-1 encoders (weights and
            features, ``cache_root/<key>/``) are uploaded to ``cache/<key>`` there, and fetched
            from it when this host does not have them.
    """

    def __init__(
        self,
        ds: Any,
        cache_root: str | Path,
        device: torch.device,
        prep_cache: bool = True,
        artifacts: ArtifactStore | None = None,
    ) -> None:
        self.ds = ds
        self.artifacts = artifacts
        self.cache_root = Path(cache_root)
        self.device = device
        self.prep_cache = prep_cache
        self.feature_cache = FeatureCache(self.cache_root)
        self._prepared: dict[tuple, Any] = {}
        self._features: dict[tuple, Any] = {}
        self.template = TrainData.from_dataset(ds, inputs={})

    @property
    def task(self) -> str:
        return self.ds.task

    def modality_input(self, m: str, espec, deadline: float | None = None) -> tuple[Any, dict]:
        """Prepared inputs (trainable encoder) or cached features (frozen encoder) for modality m;
        a frozen encoder's features not cached yet are computed only if the first rows project
        the extraction to end before ``deadline`` (else ``TrialFault("timeout")``)."""
        pkey = (m, espec.name, json.dumps(espec.params, sort_keys=True, default=str))
        if pkey not in self._prepared:
            cache = self.cache_root / "prep" if self.prep_cache else None
            self._prepared[pkey] = prepare_modality(self.ds, m, espec, cache_dir=cache)
        prepared = self._prepared[pkey]
        info = {"type": self.ds.modality_type(m), "state": prepared.state}
        if espec.mode != "frozen":
            return prepared, info
        fkey = pkey + ("frozen", espec.source)
        if fkey not in self._features:
            if espec.source is not None:  # a stage-1 encoder's stored outputs
                self._features[fkey] = self.stage1_features(espec.source)
            else:
                try:
                    self._features[fkey] = self.feature_cache.features(
                        self.ds, m, espec, prepared, device=self.device, deadline=deadline
                    )
                except FeatureCostError as e:  # a cost known before it is paid
                    raise TrialFault("timeout", str(e)) from None
        feats = self._features[fkey]
        info["feature_shape"] = feats.feature_shape.to_dict()
        return feats, info

    def prepared(self, m: str, espec) -> Any:
        """The decoded inputs of modality ``m`` for ``espec`` (prepared once per process)."""
        self.modality_input(m, espec.model_copy(update={"mode": "scratch", "source": None}))
        return self._prepared[
            (m, espec.name, json.dumps(espec.params, sort_keys=True, default=str))
        ]

    def stage1_dir(self, key: str) -> Path:
        return self.cache_root / key

    def stage1_local(self, key: str) -> Path:
        """:meth:`stage1_dir`, fetched from the artifact store when this host lacks it (the
        encoder was trained on another host).

        Raises:
            MissingFiles: neither here nor in the store (another process trained the encoder
                in its own work folder): not a fault of the trial that needs it.
        """
        folder = self.stage1_dir(key)
        if self.artifacts is not None and not (folder / "stage1.json").is_file():
            if key in self.artifacts.names("cache"):
                self.artifacts.fetch_dir(f"cache/{key}", folder)
        if not (folder / "stage1.json").is_file():
            store = "the study's artifact store" if self.artifacts else "an artifact store"
            raise MissingFiles(
                f"the stage-1 encoder {key[:12]} is neither in {folder} nor in {store}: another "
                "process trained it in its own work folder; give every process of the study "
                "the same --workdir (a shared folder) or the same --artifacts store"
            )
        return folder

    def stage1_features(self, key: str) -> CachedFeatures:
        """Outputs of a stage-1-trained encoder (every row), stored by :meth:`store_stage1`."""
        return CachedFeatures.load(self.stage1_local(key))

    def source_state(self, spec: ArchitectureSpec) -> dict[str, torch.Tensor]:
        """Weights of the stage-1 encoders ``spec`` uses frozen, as model state-dict entries (a
        search checkpoint must hold them: the model cannot be rebuilt without them)."""
        out = {}
        for m, e in spec.encoders.items():
            if e.mode == "frozen" and e.source is not None:
                weights = read_weights(self.stage1_local(e.source) / "encoder.safetensors")
                out.update({f"encoders.{m}.{k}": v for k, v in weights.items()})
        return out

    def store_stage1(
        self, key: str, m: str, espec, encoder: torch.nn.Module, record: dict[str, Any]
    ) -> None:
        """Keep a stage-1-trained encoder: its outputs for every row (the feature cache's format,
        computed as prediction computes them), its weights and its record (``stage1.json``)."""
        feats = encoder_features(encoder, self.prepared(m, espec), self.feature_cache.batch_size)
        weights = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
        meta = {
            "key": key,
            "feature_shape": feats.feature_shape.to_dict(),
            "n_rows": len(feats),
            "n_levels": len(feats.levels),
        }

        def write(tmp: Path) -> None:
            save_weights(feats.tensors(), tmp / "features.safetensors")
            save_weights(weights, tmp / "encoder.safetensors")
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
            (tmp / "stage1.json").write_text(json.dumps(record, indent=2, default=str))

        atomic_write_dir(self.stage1_dir(key), write)
        if self.artifacts is not None:
            self.artifacts.put_dir(self.stage1_dir(key), f"cache/{key}")

    def stage1_record(self, key: str) -> dict[str, Any] | None:
        """The record of an earlier stage-1 run with this key (another study's), if kept."""
        try:
            path = self.stage1_local(key) / "stage1.json"
        except MissingFiles:
            return None
        try:
            return json.loads(path.read_text())
        except ValueError:
            return None

    def prepare(
        self,
        spec: ArchitectureSpec,
        train_rows: np.ndarray | None = None,
        deadline: float | None = None,
    ) -> tuple[TrainData, dict[str, Any]]:
        """The training data of ``spec`` (its modalities' inputs) and its dataset info;
        ``train_rows`` replaces the training split (stage 1 / stage 2 of a staged search);
        ``deadline`` bounds a frozen encoder's feature extraction (:meth:`modality_input`)."""
        inputs, infos = {}, {}
        for m, espec in spec.encoders.items():
            inputs[m], infos[m] = self.modality_input(m, espec, deadline)
        data = self.template.with_inputs(inputs)
        if train_rows is not None:
            data = dataclasses.replace(data, splits={**data.splits, "train": train_rows})
        info = DatasetInfo.for_dataset(self.ds, data.target_stats, infos)
        return data, info.to_dict()

    def build(self, spec: ArchitectureSpec, info: dict[str, Any]) -> MultimodalModel:
        """The search model (frozen encoders as placeholders) on the device, seeded by the spec;
        a trainable encoder with a stage-1 ``source`` starts from that run's weights.

        Raises:
            TrialFault: ``invalid`` when the architecture cannot be built.
        """
        torch.manual_seed(spec.training.seed)
        try:
            model = build_model(spec, info, skip_frozen=True)
        except (ConfigError, ValueError, RuntimeError, TypeError) as e:
            raise TrialFault("invalid", f"architecture cannot be built: {e}") from e
        for m, e in spec.encoders.items():
            if e.mode != "frozen" and e.source is not None:
                weights = read_weights(self.stage1_local(e.source) / "encoder.safetensors")
                model.encoders[m].load_state_dict(weights)
        return model.to(self.device)

    def restore(
        self, spec: ArchitectureSpec, info: dict[str, Any], state: dict[str, torch.Tensor]
    ) -> MultimodalModel:
        """The search model of a checkpoint (frozen encoders as placeholders, fed from the
        feature cache), in eval mode; entries for the frozen encoders are not needed.

        Raises:
            ConfigError: the checkpoint lacks weights the model needs.
        """
        model = build_model(spec, info, skip_frozen=True)
        own = model.state_dict()
        missing = sorted(k for k in own if k not in state)
        if missing:
            raise ConfigError(f"checkpoint lacks {len(missing)} weight(s), e.g. {missing[:3]}")
        model.load_state_dict({k: v for k, v in state.items() if k in own})
        return model.to(self.device).eval()

    def release(self) -> None:
        """Drop the in-memory inputs (after an out-of-memory error); they reload from disk."""
        self._prepared.clear()
        self._features.clear()

    def run(
        self,
        spec: ArchitectureSpec,
        *,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
        on_checkpoint: Callable[[int, Callable[[], dict]], None] | None = None,
        deadline: float | None = None,
        resume: dict | None = None,
        amp: bool = False,
        train_rows: np.ndarray | None = None,
        init_state: dict[str, torch.Tensor] | None = None,
        first_epoch_free: bool = False,
        amp_on_cpu: bool = False,
    ) -> CandidateResult:
        """Build, train (early stopping on validation) and evaluate one candidate.

        Args:
            amp: bfloat16 autocast in training on a CUDA device that supports it
                (:func:`autofuse.train.amp_dtype`); ``amp_on_cpu`` too on the CPU (tests).
            train_rows: train on these rows instead of the training split.
            init_state: start from these weights (a stage-2 design's fusion and head, stage-1
                encoders). The result is its best fine-tuned epoch, never the start itself: a
                start chosen as the best of many on this validation split would win on its luck,
                and every seed would return the same model.
        """
        data, info = self.prepare(spec, train_rows, deadline)
        # frozen features go to the device once for this trial, not batch by batch (the result
        # keeps the host copy: device memory is held only while the trial runs)
        trial_data = data.with_inputs(trial_inputs(data.inputs, self.device))
        model = self.build(spec, info)
        t = spec.training
        if resume is not None:
            problem = resume_problem(resume, model, param_groups(model, t.lr, t.encoder_lr_scale))
            if problem is not None:  # the file CheckpointStore.load_running read it from
                where = resume.get("checkpoint_file", "the running checkpoint")
                log.warning("%s %s; the trial starts from epoch 1", where, problem)
                resume = None
        if init_state:
            load_matching(model, init_state)
        res = fit(
            model,
            trial_data,
            **training_kwargs(t),
            seed=t.seed,
            device=self.device,
            on_epoch=on_epoch,
            deadline=deadline,
            on_checkpoint=on_checkpoint,
            resume=resume,
            amp=amp,
            first_epoch_free=first_epoch_free,
            amp_on_cpu=amp_on_cpu,
        )
        return CandidateResult(
            spec=spec,
            model=model,
            data=data,
            dataset_info=info,
            val_metrics=res.val_metrics,
            test_metrics=evaluate(model, trial_data, "test", self.device),
            history=res.history,
            best_epoch=res.best_epoch,
            epochs_run=res.epochs_run,
            epochs_trained=res.epochs_trained,
            resumed_from_epoch=res.resumed_from_epoch,
            train_time_s=res.train_time_s,
            n_params=count_params(model),
            latency_ms=measure_latency_ms(model, trial_data, self.device),
            timed_out=res.timed_out,
            source_state=self.source_state(spec),
        )

    def refit(
        self,
        spec: ArchitectureSpec,
        epochs: int,
        *,
        init_state: dict[str, torch.Tensor] | None = None,
        amp: bool = False,
    ) -> CandidateResult:
        """Train ``spec`` on the training and validation rows together for exactly ``epochs``
        epochs (the count selection found; nothing is left to stop early on) and evaluate it on
        the test rows: AutoGluon's ``refit_full``. The preprocessing stays fitted on the training
        rows, as in the search, so stage-1 encoder weights and the inputs they see agree."""
        data, info = self.prepare(spec)
        rows = np.sort(np.concatenate([data.splits["train"], data.splits["val"]]))
        data = dataclasses.replace(data, splits={**data.splits, "train": rows, "val": rows[:0]})
        trial_data = data.with_inputs(trial_inputs(data.inputs, self.device))
        model = self.build(spec, info)
        if init_state:  # a finalist's starting weights (its stage-2 design's)
            load_matching(model, init_state)
        t = spec.training
        kw = training_kwargs(t) | {"epochs": epochs, "patience": epochs + 1}
        res = fit(model, trial_data, **kw, seed=t.seed, device=self.device, amp=amp)
        return CandidateResult(
            spec=spec,
            model=model,
            data=data,
            dataset_info=info,
            val_metrics={},
            test_metrics=evaluate(model, trial_data, "test", self.device),
            history=res.history,
            best_epoch=res.best_epoch,
            epochs_run=res.epochs_run,
            epochs_trained=res.epochs_trained,
            resumed_from_epoch=0,
            train_time_s=res.train_time_s,
            n_params=count_params(model),
            latency_ms=measure_latency_ms(model, trial_data, self.device),
            timed_out=False,
            source_state=self.source_state(spec),
        )

    def run_cv(
        self,
        spec: ArchitectureSpec,
        folds: list[np.ndarray],
        *,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
        on_fold: Callable[[int, list[float]], None] | None = None,
        deadline: float | None = None,
        amp: bool = False,
    ) -> CandidateResult:
        """Rank a design by K-fold cross-validation over the rows of ``folds`` (each array: one
        fold's held-out rows; together the pool the heads may learn from).

        Fold k trains a fresh model (seeded by the spec) on the other folds, stops early on fold
        k and predicts it: every pooled row gets one out-of-fold prediction. ``val_metrics`` are
        the means over folds of each held-out fold's metrics (the selection estimate), the test
        metrics those of the fold models' averaged outputs (bagging, as AutoGluon does), and
        ``selection`` keeps the per-fold scores and proper losses
        (:func:`autofuse.metrics.proper_loss`). ``on_epoch`` gets epochs numbered across folds;
        ``on_fold(k, scores)`` after each fold (it may prune). A deadline that passes ends the
        run after the current fold: the folds done are a low-fidelity estimate. The first
        fold's model is the design's model (its checkpoint, a finalist's starting point).
        """
        data, info = self.prepare(spec, deadline=deadline)
        trial_data = data.with_inputs(trial_inputs(data.inputs, self.device))
        task, metric = self.task, OBJECTIVES[self.task][0]
        pool = np.sort(np.concatenate(folds))
        test = data.splits["test"]
        t = spec.training
        oof: np.ndarray | None = None
        per_fold: list[dict[str, float]] = []
        losses, test_outs, history = [], [], []
        first: tuple[MultimodalModel, Any] | None = None
        timed_out, train_time, epochs_run = False, 0.0, 0
        for k, held in enumerate(folds):
            fold = dataclasses.replace(
                trial_data,
                splits={**trial_data.splits, "train": np.setdiff1d(pool, held), "val": held},
            )
            model = self.build(spec, info)
            base = epochs_run

            def numbered(epoch: int, metrics: dict[str, float], base: int = base) -> None:
                history.append({"epoch": base + epoch, **metrics})
                if on_epoch is not None:
                    on_epoch(base + epoch, metrics)

            res = fit(
                model,
                fold,
                **training_kwargs(t),
                seed=t.seed + k,
                device=self.device,
                on_epoch=numbered,
                deadline=deadline,
                amp=amp,
            )
            out = predict_outputs(model, fold, held, self.device)
            oof = np.zeros((len(data.y_raw), *out.shape[1:]), out.dtype) if oof is None else oof
            oof[held] = out
            per_fold.append(compute_metrics(task, data.y_raw[held], out))
            losses.append(proper_loss(task, data.y_raw[held], out))
            test_outs.append(predict_outputs(model, fold, test, self.device))
            train_time += res.train_time_s
            epochs_run += res.epochs_run
            if first is None:
                first = (model, res)
            scores = [m[metric] for m in per_fold]
            if on_fold is not None:
                on_fold(k, scores)
            if res.timed_out or (deadline is not None and time.monotonic() >= deadline):
                timed_out = k + 1 < len(folds) or res.timed_out
                break
        model, res0 = first
        scores = [m[metric] for m in per_fold]
        val = {key: float(np.mean([m[key] for m in per_fold])) for key in per_fold[0]}
        bagged = combine(test_outs, [1.0] * len(test_outs), task) if len(test) else None
        return CandidateResult(
            spec=spec,
            model=model,
            data=data,
            dataset_info=info,
            val_metrics=val,
            test_metrics=compute_metrics(task, data.y_raw[test], bagged) if len(test) else {},
            history=history,
            best_epoch=res0.best_epoch,
            epochs_run=epochs_run,
            epochs_trained=epochs_run,
            resumed_from_epoch=0,
            train_time_s=train_time,
            n_params=count_params(model),
            latency_ms=measure_latency_ms(model, trial_data, self.device),
            timed_out=timed_out,
            source_state=self.source_state(spec),
            selection={
                "kind": "cv",
                "folds": len(folds),
                "folds_done": len(scores),
                "metric": metric,
                "scores": scores,
                "mean": float(np.mean(scores)),
                "std": float(np.std(scores)),
                "loss": losses,
                "loss_mean": float(np.mean(losses)),
            },
            oof={"rows": pool, "oof": oof[pool], "test": bagged},
        )


__all__ = [
    "CandidateResult",
    "CandidateRunner",
    "DatasetInfo",
    "PinnedBatches",
    "default_device",
    "trial_inputs",
]
