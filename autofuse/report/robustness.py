"""Robustness of the finalists: each rebuilt from its checkpoint and evaluated on the test split
clean, with every modality removed and with noise added to it (MultiBench-style relative
robustness). The only part of the report that runs models.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import torch

from autofuse._util import finite
from autofuse.checkpoints import KEEP_TOP_K, CheckpointStore
from autofuse.data import Dataset
from autofuse.errors import ConfigError
from autofuse.model import MultimodalModel
from autofuse.paths import Paths
from autofuse.report.rows import Row
from autofuse.runner import CandidateRunner, default_device
from autofuse.train import TrainData, ablate, evaluate

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
    """
    spec, info, state = store.load_finalist(number)
    data, _ = runner.prepare(spec)
    return runner.restore(spec, info, state).to(device).eval(), data


def _conditions(
    model: MultimodalModel,
    data: TrainData,
    clean: dict[str, float],
    device: torch.device,
    *,
    metric: str,
    direction: str,
    sigma: float,
) -> list[dict[str, Any]]:
    """Test metrics with each modality removed and noised, and their relative robustness."""
    conds = []
    for m in sorted(data.inputs):
        for how in ("remove", "noise"):
            met = evaluate(model, ablate(data, m, how, sigma=sigma), "test", device)
            conds.append(
                {
                    "modality": m,
                    "how": how,
                    "metrics": met,
                    "relative": relative(clean[metric], met[metric], direction),
                }
            )
    return conds


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
) -> dict[str, Any]:
    """Evaluate each finalist's checkpoint on the test split: clean, each modality removed, noised.

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

    Raises:
        ConfigError: no finalist, or the dataset folder is missing or is not the one the study
            searched.
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
    runner = CandidateRunner(ds, Paths.resolve(workdir).cache, dev)
    out = []
    for r in finalists:
        model, data = load_finalist(store, r.number, runner, dev)
        clean = evaluate(model, data, "test", dev)
        conds = _conditions(
            model, data, clean, dev, metric=metric, direction=direction, sigma=sigma
        )
        rel = [c["relative"] for c in conds if finite(c["relative"])]
        out.append(
            {
                "trial": r.number,
                "fusion": r.fusion,
                "point": r.point,
                "encoders": r.encoders,
                "clean": clean,
                "recorded_test": r.test_metrics,
                "conditions": conds,
                "mean_relative": statistics.fmean(rel) if rel else None,
                "worst_relative": min(rel) if rel else None,
            }
        )
    return {
        "metric": metric,
        "direction": direction,
        "sigma": sigma,
        "device": str(dev),
        "dataset": str(dataset),
        "modalities": sorted(ds.modality_names),
        "finalists": out,
    }


__all__ = ["N_FINALISTS", "NOISE_SIGMA", "evaluate_finalists", "load_finalist", "relative"]
