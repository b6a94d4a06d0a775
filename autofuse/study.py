"""Studies: create or resume, sample candidates, train them, record them, export the best."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autofuse.errors import ConfigError
from autofuse.metrics import OBJECTIVES, is_better
from autofuse.paths import Paths, check_study_name
from autofuse.space import SearchSpace, baseline_params, describe, load_space
from autofuse.spec import ArchitectureSpec, save_architecture
from autofuse.train import TrainData, TrialFault, count_params, evaluate, fit, measure_latency_ms

log = logging.getLogger(__name__)

#: completed trials whose checkpoints are kept (the report re-evaluates the finalists)
KEEP_TOP_K = 3


@dataclass
class SearchResult:
    study_name: str
    study_dir: Path
    summary: dict

    @property
    def best_dir(self) -> Path:
        return self.study_dir / "best"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class CandidateRunner:
    """Trains candidates on one dataset, reusing prepared inputs and frozen features across trials."""

    def __init__(self, ds, paths: Paths, device: torch.device) -> None:
        from autofuse.encoders import FeatureCache

        self.ds = ds
        self.paths = paths
        self.device = device
        self.feature_cache = FeatureCache(paths.cache)
        self._prepared: dict[tuple, Any] = {}
        self._features: dict[tuple, Any] = {}
        self.task = ds.task
        self.splits = {s: ds.indices(s) for s in ("train", "val", "test")}
        y = np.asarray(ds.y)
        self.y_raw = y
        if self.task == "classification":
            self.y = torch.as_tensor(y, dtype=torch.long)
            self.target_stats = (0.0, 1.0)
        elif self.task == "regression":
            tr = y[self.splits["train"]].astype(np.float64)
            mean, std = float(tr.mean()), float(tr.std() or 1.0)
            self.target_stats = (mean, std)
            self.y = torch.as_tensor((y - mean) / std, dtype=torch.float32)
        else:
            self.y = torch.as_tensor(y, dtype=torch.float32)
            self.target_stats = (0.0, 1.0)

    def modality_input(self, m: str, espec) -> tuple[Any, dict]:
        """Prepared inputs (trainable encoder) or cached features (frozen encoder) for modality m."""
        from autofuse.encoders import prepare_modality

        pkey = (m, espec.name, json.dumps(espec.params, sort_keys=True, default=str))
        if pkey not in self._prepared:
            self._prepared[pkey] = prepare_modality(
                self.ds, m, espec, cache_dir=self.paths.cache / "prep"
            )
        prepared = self._prepared[pkey]
        info = {"type": self.ds.modality_type(m), "state": prepared.state}
        if espec.mode != "frozen":
            return prepared, info
        fkey = pkey + ("frozen",)
        if fkey not in self._features:
            self._features[fkey] = self.feature_cache.features(
                self.ds, m, espec, prepared, device=self.device
            )
        feats = self._features[fkey]
        info["feature_shape"] = feats.feature_shape.to_dict()
        return feats, info

    def dataset_info(self, infos: dict[str, dict]) -> dict:
        return {
            "name": self.ds.name,
            "task": self.task,
            "classes": self.ds.classes,
            "target_stats": list(self.target_stats),
            "fingerprint": self.ds.fingerprint(),
            "modalities": infos,
        }

    def release(self) -> None:
        """Drop the in-memory inputs (after an out-of-memory error); they reload from disk."""
        self._prepared.clear()
        self._features.clear()

    def run(
        self,
        spec: ArchitectureSpec,
        on_epoch=None,
        deadline: float | None = None,
        on_checkpoint=None,
        resume: dict | None = None,
        amp: bool = False,
    ) -> dict:
        """Build, train and evaluate one candidate. Returns metrics, the model and its data info."""
        from autofuse.model import build_model

        inputs, infos = {}, {}
        for m, espec in spec.encoders.items():
            inputs[m], infos[m] = self.modality_input(m, espec)
        info = self.dataset_info(infos)
        torch.manual_seed(spec.training.seed)
        try:
            model = build_model(spec, info, skip_frozen=True).to(self.device)
        except (ConfigError, ValueError, RuntimeError, TypeError) as e:
            raise TrialFault("invalid", f"architecture cannot be built: {e}") from e
        data = TrainData(
            task=self.task,
            y=self.y,
            y_raw=self.y_raw,
            inputs=inputs,
            splits=self.splits,
            target_stats=self.target_stats,
        )
        t = spec.training
        res = fit(
            model,
            data,
            lr=t.lr,
            weight_decay=t.weight_decay,
            batch_size=t.batch_size,
            epochs=t.epochs,
            patience=t.patience,
            aux_weight=t.aux_weight,
            seed=t.seed,
            device=self.device,
            on_epoch=on_epoch,
            deadline=deadline,
            on_checkpoint=on_checkpoint,
            resume=resume,
            amp=amp,
        )
        test = evaluate(model, data, "test", self.device)
        return {
            "spec": spec,
            "data": data,
            "val_metrics": res.val_metrics,
            "test_metrics": test,
            "history": res.history,
            "best_epoch": res.best_epoch,
            "epochs_run": res.epochs_run,
            "epochs_trained": res.epochs_trained,
            "resumed_from_epoch": res.resumed_from_epoch,
            "train_time_s": res.train_time_s,
            "n_params": count_params(model),
            "latency_ms": measure_latency_ms(model, data, self.device),
            "model": model,
            "dataset_info": info,
        }


def make_sampler(space: SearchSpace, name: str | None, seed: int):
    import optuna

    cfg = space.sampler
    name = name or cfg.name
    if name == "tpe":
        import warnings

        with warnings.catch_warnings():  # multivariate/group are flagged experimental by Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed,
                multivariate=cfg.multivariate,
                group=cfg.group,
                n_startup_trials=cfg.n_startup_trials,
                constant_liar=True,
            )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=cfg.n_startup_trials)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed)
    raise ConfigError(f"--sampler {name!r}: choose tpe, random, gp or qmc")


def make_pruner(space: SearchSpace, name: str | None = None):
    import optuna

    cfg = space.pruner
    name = name or cfg.name
    if name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=cfg.n_startup_trials, n_warmup_steps=cfg.n_warmup_steps
        )
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner {name!r}: choose median, hyperband, successive_halving or none")


def _finished(study) -> int:
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def _save_checkpoint(
    study_dir: Path, number: int, model, spec: ArchitectureSpec, info: dict
) -> None:
    from safetensors.torch import save_file

    from autofuse.model import trainable_state_dict

    ck = study_dir / "checkpoints"
    ck.mkdir(parents=True, exist_ok=True)
    save_architecture(ck / f"trial_{number}.json", spec, info)
    tmp = ck / f"trial_{number}.safetensors.tmp"
    save_file(trainable_state_dict(model), str(tmp))
    tmp.replace(ck / f"trial_{number}.safetensors")


def _prune_checkpoints(study, study_dir: Path, direction: str) -> None:
    import optuna

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    ranked = sorted(done, key=lambda t: t.value, reverse=(direction == "maximize"))
    keep = {t.number for t in ranked[:KEEP_TOP_K]}
    for f in (study_dir / "checkpoints").glob("trial_*.*"):
        n = f.name.split("_", 1)[1].split(".", 1)[0]
        if n.isdigit() and int(n) not in keep:
            f.unlink(missing_ok=True)


def search(
    dataset: str | Path | Any,
    *,
    study: str,
    trials: int | None = None,
    storage: str | None = None,
    space: str | Path | SearchSpace | None = None,
    workdir: str | Path | None = None,
    sampler: str | None = None,
    pruner: str | None = None,
    seed: int = 0,
    baselines: bool | None = None,
    trial_timeout: float | None = None,
    force: bool = False,
    progress: bool = True,
    device: str | None = None,
    mlflow_uri: str | None = None,
    heartbeat_interval: int = 30,
    grace_period: int | None = None,
    max_retry: int = 2,
    workers: int | None = None,
    devices: str | None = None,
    max_faults: int = 5,
    amp: bool = False,
    report: bool = True,
) -> SearchResult:
    """Run (or resume) a study until it holds ``trials`` finished trials, then export the best.

    Args:
        dataset: a dataset folder or an :class:`autofuse.data.Dataset`.
        study: study name (also the output folder ``trials/<study>/``).
        trials: total number of finished trials wanted (default: the space's ``trials``).
        storage: SQLAlchemy URL (default SQLite at ``trials/autofuse.db``).
        space: a search-space file, a bundled space name or a SearchSpace (default ``default``).
        workdir: root of ``trials/`` and ``reports/`` (default ``AUTOFUSE_HOME`` or the cwd).
        sampler / pruner: override the space's choice (``random`` to compare against random search).
        seed: sampler seed (worker ``k`` uses ``seed + k``).
        baselines: enqueue the hand-designed baselines first (default: the space's setting).
        trial_timeout: seconds per trial; a slower trial ends as pruned with reason ``timeout``.
        force: resume even though the dataset or the search space changed.
        progress: show a progress display.
        device: ``cuda``, ``cuda:1`` or ``cpu`` for a single in-process worker.
        mlflow_uri: MLflow tracking URI (default a SQLite store ``trials/mlflow.db``; ``"off"``
            disables MLflow logging). Unreachable: the search goes on, SQL stays complete, and
            ``autofuse mlflow sync`` back-fills later.
        heartbeat_interval / grace_period: Optuna heartbeat (seconds); a trial whose worker
            stops beating for ``grace_period`` is failed and retried (``max_retry`` times),
            resuming from its last epoch checkpoint.
        workers: number of worker processes (default: one per visible GPU, else 1 in-process).
        devices: comma-separated devices for the workers (``cuda:0,cuda:1`` or ``cpu``).
        max_faults: a worker stops after this many consecutive faulty trials.
        amp: mixed precision (bfloat16 autocast) on CUDA.
        report: write the comparison report at the end (when the report module is available).
    """
    import optuna

    from autofuse.data import Dataset
    from autofuse.workers import (
        WorkerConfig,
        check_storage_for_workers,
        open_storage,
        plan_devices,
        run_worker,
        run_workers,
    )

    check_study_name(study)
    paths = Paths.resolve(workdir)
    ds = dataset if isinstance(dataset, Dataset) else Dataset.load(dataset)  # validates first
    sp = space if isinstance(space, SearchSpace) else load_space(space)
    if baselines is not None:
        sp = sp.model_copy(update={"baselines": baselines})
    n_total = int(trials if trials is not None else sp.trials)
    if n_total < 1:
        raise ConfigError(f"--trials {n_total}: must be at least 1")
    modalities = {m: ds.modality_type(m) for m in ds.modality_names}
    for m, t in modalities.items():
        if not sp.encoder_choices(t):
            raise ConfigError(f"search space {sp.name!r} has no encoder for modality {m!r} ({t})")
    metric, direction = OBJECTIVES[ds.task]
    fingerprint = ds.fingerprint()
    space_desc = describe(sp)
    url = storage or paths.default_storage
    if device and (workers or 0) <= 1 and not devices:
        devs = [device]
    else:
        devs = plan_devices(workers, devices)
    check_storage_for_workers(url, len(devs))
    make_sampler(sp, sampler, seed)  # reject a bad --sampler / --pruner before anything is written
    make_pruner(sp, pruner)

    from autofuse.storage.history import HistoryStore

    history = HistoryStore(url)  # creates or checks autofuse's tables (refuses an old schema)
    base = WorkerConfig(
        study=study,
        storage=url,
        dataset=str(getattr(ds, "root", "")),
        space=sp.model_dump(mode="json"),
        workdir=str(paths.root),
        n_total=n_total,
        sampler=sampler,
        pruner=pruner,
        seed=seed,
        trial_timeout=trial_timeout,
        device=devs[0],
        mlflow_uri=mlflow_uri,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        max_retry=max_retry,
        max_faults=max_faults,
        amp=amp,
    )
    stor = open_storage(base)
    existing = {
        s.study_name: s for s in optuna.get_all_study_summaries(stor, include_best_trial=False)
    }
    if study in existing:
        attrs = existing[study].user_attrs
        if attrs.get("dataset_fingerprint") not in (None, fingerprint) and not force:
            raise ConfigError(
                f"study {study!r} was run on a different dataset (fingerprint "
                f"{attrs['dataset_fingerprint'][:12]} != {fingerprint[:12]}); "
                "use another --study name or --force"
            )
        if (
            attrs.get("space") is not None
            and not _same_space(attrs["space"], space_desc)
            and not force
        ):
            raise ConfigError(
                f"study {study!r} was run with a different search space; "
                "use another --study name or --force"
            )
        st = optuna.load_study(study_name=study, storage=stor)
        log.info("resuming study %s (%d finished trials)", study, _finished(st))
    else:
        st = optuna.create_study(study_name=study, storage=stor, direction=direction)
        st.set_user_attr("dataset_fingerprint", fingerprint)
        st.set_user_attr("dataset", ds.info())
        st.set_user_attr("space", space_desc)
        st.set_user_attr("metric", metric)
        for name, params in baseline_params(sp, modalities):
            st.enqueue_trial(params, user_attrs={"baseline": name})
    _enqueue_coverage(st, sp, modalities, n_total)
    dataset_path = str(ds.root.resolve()) if getattr(ds, "root", None) else None
    # what `autofuse worker` needs to join this study from another process or machine
    st.set_user_attr("dataset_path", dataset_path)
    st.set_user_attr("space_config", sp.model_dump(mode="json"))
    st.set_user_attr(
        "search_options",
        {
            "n_total": n_total,
            "sampler": sampler,
            "pruner": pruner,
            "trial_timeout": trial_timeout,
            "mlflow_uri": mlflow_uri,
            "heartbeat_interval": heartbeat_interval,
            "max_retry": max_retry,
            "amp": amp,
        },
    )
    history.upsert_study(
        study,
        dataset_fingerprint=fingerprint,
        dataset_info=ds.info(),
        dataset_path=dataset_path,
        space=space_desc,
        metric=metric,
        direction=direction,
    )
    study_dir = paths.study_dir(study)
    study_dir.mkdir(parents=True, exist_ok=True)
    (study_dir / "space.json").write_text(json.dumps(space_desc, indent=2, default=str))
    if isinstance(space, (str, Path)) and Path(space).exists():
        shutil.copyfile(space, study_dir / "space.yaml")
    tracker = _make_tracker(mlflow_uri, paths, study, ds)
    if tracker.impl is not None:
        ids = (
            getattr(tracker.impl, "experiment_id", None),
            getattr(tracker.impl, "parent_run_id", None),
        )
        history.upsert_study(study, mlflow_experiment_id=ids[0], mlflow_parent_run_id=ids[1])

    t_start = time.monotonic()
    if len(devs) == 1:
        run_worker(base, ds=ds, progress=progress)
    else:
        threads = max(1, (os.cpu_count() or 1) // len(devs)) if devs[0] == "cpu" else None
        cfgs = [
            WorkerConfig(**{**base.__dict__, "device": d, "rank": r, "threads": threads})
            for r, d in enumerate(devs)
        ]
        run_workers(cfgs, progress, metric)
    _prune_checkpoints(st, study_dir, direction)
    summary = write_outputs(st, study_dir, ds, None, metric, direction, time.monotonic() - t_start)
    tracker.finish_study(summary, study_dir)
    if report:
        _write_report(study, paths, url, summary)
        _write_json(study_dir / "summary.json", summary)
    return SearchResult(study, study_dir, summary)


def _same_space(old, new) -> bool:
    """Whether a stored space description still describes ``new``: every setting recorded then
    must be the same now; settings a newer autofuse added (absent from ``old``) are ignored."""
    if isinstance(old, dict) and isinstance(new, dict):
        return all(k in new and _same_space(v, new[k]) for k, v in old.items())
    return old == new


def _enqueue_coverage(st, sp: SearchSpace, modalities: dict[str, str], n_total: int) -> None:
    """Enqueue trials for families with fewer than ``sp.coverage`` trials (new or resumed study)."""
    import optuna

    from autofuse.space import coverage_params

    trials = st.get_trials(deepcopy=False)
    existing = []
    for t in trials:
        fam = t.params.get("family") or (t.system_attrs.get("fixed_params") or {}).get("family")
        existing.append({"family": fam})
    used = sum(t.state != optuna.trial.TrialState.FAIL for t in trials)
    for params in coverage_params(sp, modalities, existing, max(0, n_total - used)):
        st.enqueue_trial(params, user_attrs={"coverage": params["family"]})


def _write_report(study: str, paths: Paths, url: str, summary: dict) -> None:
    try:
        from autofuse.report import write_report
    except ImportError:
        return
    try:
        out = write_report(study, workdir=str(paths.root), storage=url)
        summary["report"] = {k: str(v) for k, v in (out or {}).items()}
    except Exception as e:  # a report problem must not lose a finished search
        log.warning("report not written: %s", e)


def save_checkpoint_if_top(
    st, study_dir: Path, number: int, value: float, direction: str, out: dict
) -> None:
    """Keep the weights of a completed trial that is among the top ``KEEP_TOP_K`` so far."""
    import optuna

    done = st.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    ranked = sorted((t.value for t in done), reverse=(direction == "maximize"))
    if len(ranked) < KEEP_TOP_K or is_better(value, ranked[KEEP_TOP_K - 1], direction):
        _save_checkpoint(study_dir, number, out["model"], out["spec"], out["dataset_info"])


def _utcnow():
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def reconcile_stale(st, history, tracker) -> list[int]:
    """Trials Optuna failed as stale (their worker died): record them as FAIL/killed, and mark
    their MLflow runs KILLED. Returns their numbers."""
    import optuna

    failed = {
        t.number for t in st.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
    }
    out = []
    for rec in history.trials(st.study_name):
        if rec.status == "RUNNING" and rec.number in failed:
            history.record_trial(
                st.study_name,
                rec.number,
                status="FAIL",
                reason="killed",
                error="worker stopped (missed heartbeats); trial retried",
                finished_at=_utcnow(),
            )
            tracker.kill_run(rec.mlflow_run_id)
            out.append(rec.number)
    return out


def write_outputs(
    st,
    study_dir: Path,
    ds,
    runner: CandidateRunner | None,
    metric: str,
    direction: str,
    wall_time_s: float,
) -> dict:
    """Write ``best/architecture.json``, ``best/model.safetensors`` and ``summary.json``."""
    import optuna

    TS = optuna.trial.TrialState
    all_trials = st.get_trials(deepcopy=False)
    counts = {
        "completed": sum(t.state == TS.COMPLETE for t in all_trials),
        "pruned": sum(t.state == TS.PRUNED for t in all_trials),
        "failed": sum(t.state == TS.FAIL for t in all_trials),
    }
    pruned_reasons: dict[str, int] = {}
    for t in all_trials:
        if t.state == TS.PRUNED:
            r = t.user_attrs.get("reason", "pruned")
            pruned_reasons[r] = pruned_reasons.get(r, 0) + 1
    summary: dict[str, Any] = {
        "study": st.study_name,
        "dataset": ds.info(),
        "metric": metric,
        "direction": direction,
        "trials": counts,
        "pruned_reasons": pruned_reasons,
        "wall_time_s": round(wall_time_s, 2),
    }
    completed = [t for t in all_trials if t.state == TS.COMPLETE]
    if not completed:
        summary["best_trial"] = None
        _write_json(study_dir / "summary.json", summary)
        return summary
    best = st.best_trial
    per_family: dict[str, dict] = {}
    for t in completed:
        fam = t.user_attrs.get("family", "?")
        if fam not in per_family or is_better(t.value, per_family[fam]["value"], direction):
            per_family[fam] = {
                "trial": t.number,
                "value": t.value,
                "method": t.user_attrs.get("method"),
                "point": t.user_attrs.get("point"),
                "test_metrics": t.user_attrs.get("test_metrics"),
            }
    baselines = {
        t.user_attrs["baseline"]: {
            "trial": t.number,
            "value": t.value,
            "test_metrics": t.user_attrs.get("test_metrics"),
        }
        for t in completed
        if "baseline" in t.user_attrs
    }
    summary.update(
        {
            "best_trial": best.number,
            "best_value": best.value,
            "spec": best.user_attrs.get("spec"),
            "val_metrics": best.user_attrs.get("val_metrics"),
            "test_metrics": best.user_attrs.get("test_metrics"),
            "n_params": best.user_attrs.get("n_params"),
            "latency_ms": best.user_attrs.get("latency_ms"),
            "per_family_best": per_family,
            "baselines": baselines,
        }
    )
    try:
        export_best(study_dir, best.number)
        summary["best_dir"] = str(study_dir / "best")
    except ConfigError as e:  # e.g. a study resumed in another work directory
        log.warning("best trial %d not exported: %s", best.number, e)
        summary["best_dir"] = None
    _write_json(study_dir / "summary.json", summary)
    return summary


def export_best(study_dir: Path, number: int) -> Path:
    """Full model (frozen encoders included) of trial ``number`` into ``<study_dir>/best/``."""
    from safetensors.torch import load_file, save_file

    from autofuse.export import full_model
    from autofuse.spec import load_architecture

    ck = study_dir / "checkpoints"
    arch, weights = ck / f"trial_{number}.json", ck / f"trial_{number}.safetensors"
    if not arch.exists() or not weights.exists():
        raise ConfigError(f"no checkpoint for trial {number} under {ck}")
    spec, info = load_architecture(arch)
    model = full_model(spec, info, load_file(str(weights)), what=f"checkpoint of trial {number}")
    out = study_dir / "best"
    out.mkdir(parents=True, exist_ok=True)
    save_architecture(out / "architecture.json", spec, info)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors.tmp"))
    (out / "model.safetensors.tmp").replace(out / "model.safetensors")
    return out


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str))
    tmp.replace(path)


class _Tracker:
    """The search's view of MLflow: every call is safe when MLflow is off or unreachable."""

    def __init__(self, impl=None, history=None, study: str = "") -> None:
        self.impl = impl
        self.history = history
        self.study = study

    def _ok(self) -> bool:
        return self.impl is not None and getattr(self.impl, "available", True)

    def start_trial(self, number: int, params: dict, tags: dict) -> str | None:
        return self.impl.start_trial(number, params, tags) if self._ok() else None

    def log_epoch(self, run_id: str | None, epoch: int, metrics: dict) -> None:
        if run_id and self._ok():
            self.impl.log_epoch(run_id, epoch, metrics)

    def end_trial(
        self, run_id: str | None, status: str, metrics: dict, tags: dict, spec: dict
    ) -> None:
        if run_id and self._ok():
            self.impl.end_trial(run_id, status, metrics, tags, spec)

    def kill_run(self, run_id: str | None) -> None:
        if run_id and self._ok():
            self.impl.end_trial(
                run_id, "KILLED", {}, {"autofuse.status": "FAIL", "autofuse.reason": "killed"}, None
            )

    def finish_study(self, summary: dict, study_dir: Path) -> None:
        if not self._ok():
            return
        best = summary.get("best_trial")
        metrics = {f"best_val_{k}": v for k, v in (summary.get("val_metrics") or {}).items()}
        metrics.update(
            {f"best_test_{k}": v for k, v in (summary.get("test_metrics") or {}).items()}
        )
        if best is not None and (study_dir / "best" / "architecture.json").exists():
            try:
                from safetensors.torch import load_file

                from autofuse.model import build_model
                from autofuse.spec import load_architecture

                spec, info = load_architecture(study_dir / "best" / "architecture.json")
                model = build_model(spec, info)
                model.load_state_dict(load_file(str(study_dir / "best" / "model.safetensors")))
                # mlflow.pytorch warns that pickled models run code when loaded; this is our own model
                pt_log = logging.getLogger("mlflow.pytorch")
                level, pt_log.level = pt_log.level, logging.ERROR
                try:
                    self.impl.log_best_model(
                        model, study_dir / "best" / "architecture.json", self.study
                    )
                finally:
                    pt_log.setLevel(level)
            except Exception as e:  # MLflow trouble must not lose the search's results
                log.warning("could not log the best model to MLflow: %s", e)
        self.impl.end_study("FINISHED", metrics)


def _make_tracker(uri: str | None, paths: Paths, study: str, ds) -> _Tracker:
    if uri == "off":
        return _Tracker()
    try:
        from autofuse.storage.mlflow import MlflowTracker, default_tracking_uri
    except ImportError:  # pragma: no cover
        return _Tracker()
    impl = MlflowTracker(uri or default_tracking_uri(paths.trials), study)
    impl.start_study(
        {"dataset": ds.name, "fingerprint": ds.fingerprint()[:16]}, {"autofuse.dataset": ds.name}
    )
    return _Tracker(impl, study=study)
