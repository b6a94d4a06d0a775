"""Weighted ensembles of finished models: combining raw outputs and greedy ensemble selection.

Everything here works on the raw outputs of single models, in the convention of
:func:`autofuse.train.predict_outputs` and :func:`autofuse.metrics.compute_metrics`: logits
``[N, C]`` for classification and multilabel, values ``[N, 1]`` (or ``[N]``) on the target's
original scale for regression. :func:`combine` returns the ensemble's outputs in that same
convention, so an ensemble can be scored, thresholded and formatted exactly like one model:

- classification: the members' softmax probabilities are averaged and their log returned (its
  softmax is the averaged probability, its argmax the ensemble's class);
- multilabel: the members' sigmoid probabilities are averaged and their logit returned (``> 0``
  thresholds the averaged probability at 0.5);
- regression: the weighted mean of the values.

:func:`greedy_selection` finds the weights (Caruana et al. 2004). The ensemble export format
(``ensemble.json`` plus one export folder per member) is written by
:func:`autofuse.export.write_ensemble_export` and read by :class:`autofuse.predict.EnsemblePredictor`;
its file name and format tag live here, below both.

This module needs numpy only (no torch), so it is cheap to import.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from autofuse.metrics import compute_metrics, is_better

#: the file that marks an ensemble export folder
ENSEMBLE_FILE = "ensemble.json"
#: ``format`` value of ``ensemble.json``
ENSEMBLE_FORMAT = "autofuse.ensemble"
#: ``version`` value of ``ensemble.json``
ENSEMBLE_VERSION = 1

TASKS = ("classification", "multilabel", "regression")
#: probabilities are kept in [_EPS, 1 - _EPS] before log / logit, so outputs stay finite
_EPS = 1e-12


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} (one of {', '.join(TASKS)})")


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -x))  # stable for large |x|


def _to_mean_space(output: np.ndarray, task: str) -> np.ndarray:
    """What is averaged for ``task``: probabilities (classification, multilabel) or values."""
    x = np.asarray(output, dtype=np.float64)
    if task == "classification":
        if x.ndim != 2:
            raise ValueError(f"classification outputs must be [N, C] logits, got shape {x.shape}")
        return _softmax(x)
    if task == "multilabel":
        return _sigmoid(x)
    return x


def _from_mean_space(mean: np.ndarray, task: str) -> np.ndarray:
    """Averaged probabilities / values back to raw outputs (log-probabilities / logits / values)."""
    if task == "classification":
        return np.log(np.clip(mean, _EPS, 1.0))
    if task == "multilabel":
        p = np.clip(mean, _EPS, 1.0 - _EPS)
        return np.log(p) - np.log1p(-p)
    return mean


def _normalised(weights: Sequence[float], n: int) -> np.ndarray:
    w = np.asarray(list(weights), dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"{len(w)} weight(s) for {n} member output(s)")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"weights must be finite and >= 0, got {w.tolist()}")
    total = w.sum()
    if total <= 0:
        raise ValueError("at least one weight must be > 0")
    return w / total


def _mix(values: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """The weighted mean of ``values`` (weights normalised to sum 1; zero weights skipped)."""
    w = _normalised(weights, len(values))
    acc = np.zeros_like(values[0], dtype=np.float64)
    for wi, v in zip(w, values, strict=True):
        if wi > 0:
            acc += wi * v
    return acc


def _check_outputs(outputs: Sequence[np.ndarray]) -> None:
    if len(outputs) == 0:
        raise ValueError("no member outputs to combine")
    shapes = {np.shape(o) for o in outputs}
    if len(shapes) != 1:
        raise ValueError(f"member outputs differ in shape: {sorted(shapes)}")


def combine(outputs: list[np.ndarray], weights: list[float], task: str) -> np.ndarray:
    """The weighted ensemble's raw outputs, in the convention of one model's raw outputs.

    Args:
        outputs: each member's raw outputs for the same rows (same shape): logits ``[N, C]``
            (classification, multilabel) or values ``[N, 1]`` / ``[N]`` (regression).
        weights: one weight per member, ``>= 0``, not all zero; normalised to sum 1.
        task: classification | multilabel | regression.

    Returns:
        float64 array of the members' shape: the log of the averaged softmax probabilities
        (classification), the logit of the averaged sigmoid probabilities (multilabel), or the
        weighted mean (regression). Probabilities are clipped to ``[1e-12, 1 - 1e-12]`` first, so
        the result is finite.

    Raises:
        ValueError: an unknown task, no outputs, outputs of different shapes, or bad weights.
    """
    _check_task(task)
    _check_outputs(outputs)
    values = [_to_mean_space(o, task) for o in outputs]
    return _from_mean_space(_mix(values, weights), task)


def greedy_selection(
    outputs: list[np.ndarray],
    y_true: np.ndarray,
    task: str,
    metric: str,
    direction: str,
    rounds: int = 25,
) -> tuple[list[float], float]:
    """Greedy ensemble selection with replacement (Caruana et al. 2004).

    R. Caruana, A. Niculescu-Mizil, G. Crew, A. Ksikes, "Ensemble Selection from Libraries of
    Models", ICML 2004. Starting from the empty ensemble, every round adds the member (a member
    may be added again: selection with replacement) whose addition gives the best validation
    ``metric`` of the equally weighted ensemble of all members added so far, scored as
    ``compute_metrics(task, y_true, combine(outputs, counts, task))[metric]``. After ``rounds``
    rounds the best-scoring prefix of the additions is kept (the paper's "select the ensemble
    size on the validation set"); a member's weight is how often it was added in that prefix,
    divided by the prefix length. Ties go to the earlier-listed member within a round and to the
    shorter prefix over rounds, so a single best model wins against an ensemble that only
    matches it.

    Args:
        outputs: each candidate's raw validation outputs (same rows, same shape).
        y_true: the validation targets as :func:`autofuse.metrics.compute_metrics` takes them.
        task: classification | multilabel | regression.
        metric: a key of ``compute_metrics``'s result for ``task`` (e.g. ``accuracy``, ``rmse``).
        direction: ``maximize`` or ``minimize``.
        rounds: additions to try (>= 1).

    Returns:
        ``(weights, score)``: one normalised weight per candidate (0 for candidates never
        selected; they sum to 1) and the validation ``metric`` of that weighted ensemble.

    Raises:
        ValueError: bad arguments (unknown task, metric or direction, no rows, no candidates,
            outputs of different shapes, ``rounds < 1``).
    """
    _check_task(task)
    _check_outputs(outputs)
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"direction must be 'maximize' or 'minimize', got {direction!r}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if len(y_true) == 0:
        raise ValueError("no validation rows to select an ensemble on")
    if len(y_true) != len(outputs[0]):
        raise ValueError(f"{len(y_true)} targets for {len(outputs[0])} output rows")
    values = [_to_mean_space(o, task) for o in outputs]

    def score(counts: np.ndarray) -> float:
        scores = compute_metrics(task, y_true, _from_mean_space(_mix(values, counts), task))
        if metric not in scores:
            raise ValueError(
                f"unknown metric {metric!r} for {task} (one of {', '.join(sorted(scores))})"
            )
        return float(scores[metric])

    m = len(outputs)
    counts = np.zeros(m, dtype=np.float64)
    best_counts: np.ndarray | None = None
    best_score = float("nan")
    for _ in range(rounds):
        pick, pick_score = 0, float("nan")
        for j in range(m):
            trial = counts.copy()
            trial[j] += 1
            s = score(trial)
            if j == 0 or is_better(s, pick_score, direction):
                pick, pick_score = j, s
        counts[pick] += 1
        if best_counts is None or is_better(pick_score, best_score, direction):
            best_counts, best_score = counts.copy(), pick_score
    assert best_counts is not None  # rounds >= 1
    weights = best_counts / best_counts.sum()
    return [float(w) for w in weights], best_score


__all__ = [
    "ENSEMBLE_FILE",
    "ENSEMBLE_FORMAT",
    "ENSEMBLE_VERSION",
    "combine",
    "greedy_selection",
]
