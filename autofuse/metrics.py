"""Task metrics and the objective each task optimises."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import f1_score, mean_absolute_error, r2_score

from autofuse._util import better

#: task -> (objective metric, direction)
OBJECTIVES = {
    "classification": ("accuracy", "maximize"),
    "regression": ("rmse", "minimize"),
    "multilabel": ("macro_f1", "maximize"),
}


def compute_metrics(task: str, y_true: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
    """Metrics from raw model outputs.

    Args:
        task: classification | regression | multilabel.
        y_true: class indices ``[N]`` / targets ``[N]`` / multi-hot ``[N, C]``.
        outputs: logits ``[N, C]`` / predictions ``[N]`` (original scale) / logits ``[N, C]``.
    """
    if len(y_true) == 0:
        return {}
    if task == "classification":
        pred = outputs.argmax(axis=1)
        return {
            "accuracy": float((pred == y_true).mean()),
            "macro_f1": float(f1_score(y_true, pred, average="macro", zero_division=0)),
        }
    if task == "regression":
        y, p = y_true.astype(np.float64), outputs.reshape(-1).astype(np.float64)
        return {
            "rmse": float(np.sqrt(np.mean((y - p) ** 2))),
            "mae": float(mean_absolute_error(y, p)),
            "r2": float(r2_score(y, p)) if len(y) > 1 else float("nan"),
        }
    pred = (outputs > 0).astype(np.int64)
    yt = y_true.astype(np.int64)
    return {
        "macro_f1": float(f1_score(yt, pred, average="macro", zero_division=0)),
        "micro_f1": float(f1_score(yt, pred, average="micro", zero_division=0)),
        "accuracy": float((pred == yt).all(axis=1).mean()),
    }


def proper_loss(task: str, y_true: np.ndarray, outputs: np.ndarray) -> float:
    """A proper scoring rule of raw outputs (lower is better): the mean log-loss of the softmax
    probabilities (classification), of the sigmoid probabilities (multilabel), or the mean
    squared error on the original scale (regression). It breaks ties of the metric when designs
    are ranked (a saturated accuracy says nothing more; the loss still does)."""
    if len(y_true) == 0:
        return float("nan")
    out = np.asarray(outputs, dtype=np.float64)
    if task == "classification":
        z = out - out.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-logp[np.arange(len(y_true)), np.asarray(y_true, dtype=np.int64)].mean())
    if task == "regression":
        y = np.asarray(y_true, dtype=np.float64)
        return float(np.mean((y - out.reshape(-1)) ** 2))
    y = np.asarray(y_true, dtype=np.float64)  # multilabel: binary cross-entropy per label
    return float(np.mean(np.logaddexp(0.0, out) - y * out))


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho of ``x`` and ``y`` (:func:`scipy.stats.spearmanr`); ``None`` with fewer
    than 3 pairs or a constant side (no ranking to compare)."""
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = float(spearmanr(x, y).statistic)
    return rho if math.isfinite(rho) else None


def is_better(a: float, b: float | None, direction: str) -> bool:
    """Whether ``a`` beats ``b`` for the task's direction (see :func:`autofuse._util.better`)."""
    return better(a, b, direction)
