"""Robustness of the finalists: each rebuilt from its checkpoint and evaluated on the test split
clean, with every modality removed and with noise added to it (MultiBench-style relative
robustness). The only part of the report that runs models.

A staged study's winner may be a weighted ensemble of finalist models: its members are evaluated
one by one, and the ensemble as a whole by combining the members' outputs under each condition
with the winner's weights (:func:`autofuse.ensemble.combine`, as the search scored it).
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autofuse._util import finite, first_line
from autofuse.checkpoints import KEEP_TOP_K, CheckpointStore
from autofuse.data import Dataset
from autofuse.ensemble import combine
from autofuse.errors import ConfigError, DamagedFileError
from autofuse.metrics import compute_metrics
from autofuse.model import MultimodalModel
from autofuse.paths import Paths
from autofuse.report.rows import Row
from autofuse.runner import CandidateRunner, default_device
from autofuse.train import TrainData, ablate, predict_outputs

log = logging.getLogger(__name__)

#: finalists whose robustness is measured (the search keeps checkpoints of the top few)
N_FINALISTS = KEEP_TOP_K
#: Gaussian noise level (times each input's standard deviation) of the robustness test
NOISE_SIGMA = 0.5


def relative(clean: float, ablated: float, direction: str) -> float:
    """MultiBench-style relative robustness: 1 = unchanged, below 1 = worse.

    ``ablated / clean`` for a metric to maximise, ``clean / ablated`` for one to minimise (rmse).
    """
    if direction == "maximize":
        return ablated / clean if clean else float("nan")
    return clean / ablated if ablated else float("nan")


def load_finalist(
    store: CheckpointStore, number: int, runner: CandidateRunner, device: torch.device
) -> tuple[MultimodalModel, TrainData]:
    """Rebuild trial ``number`` from its checkpoint and the data it evaluates on.

    Returns ``(model, TrainData)``; frozen encoders are served from the feature cache exactly as
    in the search, so the model is the one that was trained and scored.

    Raises:
        ConfigError: the trial has no checkpoint.
        DamagedFileError: its checkpoint cannot be read, or does not fit its spec.
    """
    spec, info, state = store.load_finalist(number)
    data, _ = runner.prepare(spec)
    try:
        model = runner.restore(spec, info, state)
    except (ConfigError, RuntimeError, ValueError) as e:  # RuntimeError: a tensor's shape
        weights = store.finalist_paths(number)[1]
        raise DamagedFileError(
            weights, f"does not fit its architecture ({first_line(e)})"
        ) from None
    return model.to(device).eval(), data


#: the perturbations, in report order
HOW = ("remove", "noise")


def _outputs(
    model: MultimodalModel,
    data: TrainData,
    modalities: list[str],
    device: torch.device,
    sigma: float,
) -> dict[tuple[str, str] | None, np.ndarray]:
    """The model's test outputs clean (key ``None``) and under each ``(modality, how)``; a
    modality the model does not read leaves its outputs as they are."""
    idx = data.splits["test"]
    clean = predict_outputs(model, data, idx, device)
    out: dict[tuple[str, str] | None, np.ndarray] = {None: clean}
    for m in modalities:
        for how in HOW:
            out[(m, how)] = (
                predict_outputs(model, ablate(data, m, how, sigma=sigma), idx, device)
                if m in data.inputs
                else clean
            )
    return out


def _scored(
    outputs: dict[tuple[str, str] | None, np.ndarray],
    task: str,
    y: np.ndarray,
    used: set[str],
    *,
    metric: str,
    direction: str,
) -> tuple[dict[str, float], list[dict[str, Any]], float | None, float | None]:
    """``(clean metrics, conditions, mean relative, worst relative)`` of a model's outputs."""
    clean = compute_metrics(task, y, outputs[None])
    conds = []
    for key, out in outputs.items():
        if key is None:
            continue
        m, how = key
        met = compute_metrics(task, y, out)
        conds.append(
            {
                "modality": m,
                "how": how,
                "metrics": met,
                "relative": relative(clean[metric], met[metric], direction),
                "used": m in used,
            }
        )
    rel = [c["relative"] for c in conds if c["used"] and finite(c["relative"])]
    return (
        clean,
        conds,
        statistics.fmean(rel) if rel else None,
        min(rel) if rel else None,
    )


def evaluate_finalists(
    finalists: list[Row],
    store: CheckpointStore,
    dataset: str | Path,
    *,
    workdir: str | Path | None = None,
    metric: str,
    direction: str,
    fingerprint: str | None = None,
    device: str | None = None,
    sigma: float = NOISE_SIGMA,
    ensemble: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate each finalist's checkpoint on the test split: clean, each modality removed, noised.

    Every finalist gets one condition per dataset modality and perturbation, in the same order
    (``used`` False and the clean metrics where the finalist does not read the modality, as a
    stage-2 design fusing a subset of the modalities), so the finalists line up column by column.

    Args:
        finalists: the trials to evaluate (each with a checkpoint in ``store``).
        store: the study's checkpoints.
        dataset: the dataset folder the study searched.
        workdir: the work directory (its prepared-input and feature caches are reused).
        metric: the metric whose relative robustness is reported.
        direction: ``maximize`` / ``minimize`` for ``metric``.
        fingerprint: the dataset fingerprint the study recorded (checked when given).
        device: where to evaluate (default CUDA when available).
        sigma: the noise level, times each input's standard deviation.
        ensemble: ``{"trials", "weights", "recorded_test"}``: a weighted ensemble of the
            finalists (all of them in ``finalists``) also evaluated as a whole.

    A finalist whose checkpoint cannot be read is skipped with a warning naming the file (listed
    under ``skipped``: ``{"trial", "error"}``); the ensemble is then not evaluated as a whole.

    Raises:
        ConfigError: no finalist, no finalist whose checkpoint can be read, or the dataset
            folder is missing or is not the one the study searched.
    """
    if not finalists:
        raise ConfigError(f"no finalist checkpoints under {store.finalist_dir}")
    if not Path(dataset).exists():
        raise ConfigError(
            f"dataset folder {dataset} not found; pass --dataset DIR to evaluate the finalists"
        )
    ds = Dataset.load(dataset)
    if fingerprint and ds.fingerprint() != fingerprint:
        raise ConfigError(
            f"dataset {dataset} differs from the one the study searched "
            "(fingerprint mismatch); robustness not evaluated"
        )
    dev = torch.device(device) if device else default_device()
    runner = CandidateRunner(ds, Paths.resolve(workdir).cache, dev, artifacts=store.artifacts)
    modalities = sorted(ds.modality_names)
    out = []
    member_outputs: dict[int, dict] = {}
    member_inputs: dict[int, set[str]] = {}
    task, y = "", np.zeros(0)
    skipped = []
    for r in finalists:
        try:
            model, data = load_finalist(store, r.number, runner, dev)
        except DamagedFileError as e:
            log.warning("finalist trial %d skipped in the report: %s", r.number, e)
            skipped.append({"trial": r.number, "error": str(e)})
            continue
        outputs = _outputs(model, data, modalities, dev, sigma)
        task, y = data.task, data.y_raw[data.splits["test"]]
        clean, conds, mean_rel, worst_rel = _scored(
            outputs, task, y, set(data.inputs), metric=metric, direction=direction
        )
        member_outputs[r.number] = outputs
        member_inputs[r.number] = set(data.inputs)
        out.append(
            {
                "trial": r.number,
                "fusion": r.fusion,
                "point": r.point,
                "encoders": r.encoders,
                "clean": clean,
                "recorded_test": r.test_metrics,
                "conditions": conds,
                "mean_relative": mean_rel,
                "worst_relative": worst_rel,
            }
        )
    if not out:
        raise ConfigError(
            "no finalist checkpoint could be read: " + "; ".join(s["error"] for s in skipped)
        )
    ens = None
    if ensemble is not None and all(n in member_outputs for n in ensemble["trials"]):
        keys = list(member_outputs[ensemble["trials"][0]])
        combined = {
            k: combine(
                [member_outputs[n][k] for n in ensemble["trials"]], ensemble["weights"], task
            )
            for k in keys
        }
        used = set().union(*(member_inputs[n] for n in ensemble["trials"]))
        clean, conds, mean_rel, worst_rel = _scored(
            combined, task, y, used, metric=metric, direction=direction
        )
        ens = {
            "trials": list(ensemble["trials"]),
            "weights": list(ensemble["weights"]),
            "clean": clean,
            "recorded_test": dict(ensemble.get("recorded_test") or {}),
            "conditions": conds,
            "mean_relative": mean_rel,
            "worst_relative": worst_rel,
        }
    return {
        "metric": metric,
        "direction": direction,
        "sigma": sigma,
        "device": str(dev),
        "dataset": str(dataset),
        "modalities": modalities,
        "finalists": out,
        "ensemble": ens,
        "skipped": skipped,
    }


__all__ = ["N_FINALISTS", "NOISE_SIGMA", "evaluate_finalists", "load_finalist", "relative"]
