"""Splits: which rows are ``train``, ``val`` or ``test``, from a split column or by ratio, and
the cross-validation folds over the rows a model may learn from (:func:`cv_folds`).

The functions here compute; the content checker (:mod:`autofuse.data.validate`) turns what they
find into :class:`~autofuse.data.problems.Problem` objects naming rows of the table.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Sequence

import numpy as np

from autofuse.data.schema import SPLIT_NAMES, ColumnSplit, RatioSplit
from autofuse.errors import ConfigError

logger = logging.getLogger(__name__)


def _systematic(n: int, rate: float, phase: float) -> np.ndarray:
    """Boolean mask picking about ``n * rate`` evenly spaced positions."""
    pos = np.arange(n, dtype=np.float64) + phase
    return np.floor((pos + 1) * rate) > np.floor(pos * rate)


def ratio_split(
    n: int,
    spec: RatioSplit,
    strata: Sequence[str | None] | None = None,
    groups: Sequence[str | None] | None = None,
) -> np.ndarray:
    """Assign ``train`` / ``val`` / ``test`` to ``n`` rows by ratio, deterministically.

    Args:
        n: number of rows.
        spec: ratios and seed.
        strata: per-row class (classification): each class is spread over the splits in
            proportion and keeps at least one training row. Ignored when ``groups`` is given.
        groups: per-row group: every group lands whole in one split. Groups are taken in a
            seeded random order, filling ``test`` then ``val`` up to their ratio.

    Returns:
        Object array of split names.
    """
    rng = np.random.default_rng(spec.seed)
    out = np.full(n, "train", dtype=object)
    if groups is not None:
        sizes = Counter(groups)
        names = sorted(sizes, key=lambda g: (g is None, str(g)))
        target = {"test": spec.test * n, "val": spec.val * n}
        filled = {"test": 0, "val": 0}
        where: dict[str | None, str] = {}
        for i in rng.permutation(len(names)):
            name = names[i]
            dest = next((s for s in ("test", "val") if filled[s] < target[s]), "train")
            where[name] = dest
            if dest != "train":
                filled[dest] += sizes[name]
        return np.array([where[g] for g in groups], dtype=object)

    keys = [""] * n if strata is None else ["" if s is None else s for s in strata]
    perm = rng.permutation(n)
    ordered = sorted(perm.tolist(), key=lambda i: keys[i])  # stable: random order within a class
    rest: list[int] = []
    seen: set[str] = set()
    for i in ordered:
        if strata is not None and keys[i] not in seen:
            seen.add(keys[i])  # the first row of each class stays in train
            continue
        rest.append(i)
    held_rate = spec.val + spec.test
    held = _systematic(len(rest), held_rate, rng.random())
    held_rows = np.asarray(rest, dtype=np.int64)[held]
    to_test = _systematic(len(held_rows), spec.test / held_rate, rng.random())
    out[held_rows[to_test]] = "test"
    out[held_rows[~to_test]] = "val"
    return out


def column_split(values: Sequence[str | None]) -> np.ndarray:
    """Split names from a split column's values, ``""`` where a value is not a split name."""
    return np.array([v if v in SPLIT_NAMES else "" for v in values], dtype=object)


def bad_split_value(value: str | None) -> str | None:
    """The message for a split column value that is not a split name; None when it is one."""
    if value in SPLIT_NAMES:
        return None
    shown = "empty" if value is None else f"'{value}'"
    return f"split value {shown} is not train, val or test"


def class_strata(task: str, y: np.ndarray | None) -> list[str] | None:
    """Per-row strata for :func:`ratio_split`: the class of a classification target, else None."""
    if task == "classification" and y is not None:
        return [str(v) for v in y.tolist()]
    return None


def empty_split_messages(
    split: np.ndarray, spec: ColumnSplit | RatioSplit, n: int, group: str | None = None
) -> list[str]:
    """One message per split name (train, val, test order) that has no rows in ``split``.

    ``group``: the group column a ratio split kept whole (default: the spec's ``group``).
    """
    messages: list[str] = []
    for name in SPLIT_NAMES:
        if (split == name).any():
            continue
        if isinstance(spec, ColumnSplit):
            messages.append(f"split '{name}' has no rows")
        else:
            group = group or spec.group
            messages.append(
                f"split '{name}' gets no rows from the ratio split "
                f"({n} rows, val={spec.val}, test={spec.test}"
                f"{', grouped by ' + group if group else ''})"
            )
    return messages


# ---- cross-validation folds ---------------------------------------------------------------


def _fold_strata(y: np.ndarray, task: str) -> np.ndarray | None:
    """Per-row stratum of the pool's targets: the class (classification); for multilabel the
    row's most frequent positive label in the pool (ties: the first label; rows without a
    positive label form one more stratum, ``-1``); None for regression (not stratified)."""
    if task == "classification":
        return np.asarray(y).astype(np.int64)
    if task == "multilabel":
        y = np.asarray(y)
        positive = y > 0
        freq = positive.sum(axis=0)
        score = np.where(positive, freq[None, :], -1)
        strata = score.argmax(axis=1).astype(np.int64)
        strata[~positive.any(axis=1)] = -1
        return strata
    return None


def _split_with(splitter: object, n: int, strata: np.ndarray | None, codes: np.ndarray | None):
    """The test index arrays of ``splitter`` over ``n`` rows, sklearn's warnings (a class with
    fewer members than folds) logged instead of printed."""
    x = np.zeros((n, 1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tests = [test for _, test in splitter.split(x, strata, codes)]  # type: ignore[attr-defined]
    for w in caught:
        logger.warning("cross-validation folds: %s", w.message)
    return tests


def cv_folds(
    rows: np.ndarray,
    y: np.ndarray,
    task: str,
    k: int,
    groups: np.ndarray | None = None,
    seed: int = 0,
) -> list[np.ndarray]:
    """Cross-validation folds over ``rows``, stratified by class and grouped by ``groups``.

    Classification is stratified by class (scikit-learn's ``StratifiedKFold``); multilabel is
    stratified by each row's most frequent positive label (the label of the row with the most
    rows in the pool; rows without a positive label form one more stratum); regression is not
    stratified (``KFold``). With ``groups``, every group lands whole in one fold
    (``StratifiedGroupKFold`` for classification and multilabel, ``GroupKFold`` for regression;
    ``GroupKFold`` folds hold equal numbers of groups, so their sizes follow the group sizes).
    Rows are shuffled by ``seed``: the same arguments give the same folds.

    ``k`` is reduced, with a logged warning, when the pool cannot fill ``k`` folds: to the
    number of rows, to the number of groups, or (classification without groups) to the size of
    the largest class when every class is smaller than ``k``. A class with fewer members than
    folds is allowed (sklearn's warning is logged): some folds then lack it. When stratified
    grouping would leave a fold empty, the groups are split without stratification (warned).

    Args:
        rows: dataset row indices, the pool the folds divide (the rows a model may learn from).
        y: the full target array, indexed by row: encoded class labels (classification), a 2-D
            0/1 array (multilabel) or floats (regression).
        task: ``classification`` | ``regression`` | ``multilabel``.
        k: the number of folds wanted, at least 2 (a caller wanting one split handles it).
        groups: the full per-row group array (indexed by row), or None.
        seed: shuffles the rows (groups) before they are dealt into folds.

    Returns:
        The validation rows of each fold: sorted int64 arrays of row indices, disjoint and
        together exactly ``rows``; ``k`` of them unless reduced as said above.

    Raises:
        ConfigError: ``k`` below 2, fewer than 2 rows, or (with ``groups``) fewer than 2
            groups in ``rows``.
        ValueError: an unknown ``task`` or a row listed twice in ``rows``.
    """
    if task not in ("classification", "regression", "multilabel"):
        raise ValueError(
            f"unknown task {task!r}; expected classification, regression or multilabel"
        )
    k = int(k)
    if k < 2:
        raise ConfigError(
            f"cross-validation needs at least 2 folds (got folds={k}); with 1 the validation "
            "split is used instead"
        )
    rows = np.asarray(rows, dtype=np.int64).ravel()
    if len(np.unique(rows)) != len(rows):
        raise ValueError("rows lists a row more than once")
    n = len(rows)
    if n < 2:
        raise ConfigError(f"cross-validation needs at least 2 rows to divide into folds, got {n}")
    from sklearn.model_selection import (  # lazy: importing the data layer stays light
        GroupKFold,
        KFold,
        StratifiedGroupKFold,
        StratifiedKFold,
    )

    strata = _fold_strata(np.asarray(y)[rows], task)
    k_eff = k
    if groups is None:
        if n < k_eff:
            logger.warning("cross-validation: %d rows cannot fill %d folds; using %d", n, k, n)
            k_eff = n
        splitter: object = KFold(k_eff, shuffle=True, random_state=seed)
        if strata is not None:
            largest = int(np.unique(strata, return_counts=True)[1].max())
            if largest < k_eff:  # sklearn refuses: every class is smaller than k
                logger.warning(
                    "cross-validation: every class has fewer than %d rows (the largest %d); "
                    "using %d folds",
                    k_eff,
                    largest,
                    max(largest, 2),
                )
                k_eff = max(largest, 2)
            if largest >= 2:
                splitter = StratifiedKFold(k_eff, shuffle=True, random_state=seed)
            else:  # every row its own class: nothing to stratify
                splitter = KFold(k_eff, shuffle=True, random_state=seed)
        tests = _split_with(splitter, n, strata, None)
    else:
        _, codes = np.unique(
            np.asarray(groups, dtype=object)[rows].astype(str), return_inverse=True
        )
        n_groups = int(codes.max()) + 1
        if n_groups < 2:
            raise ConfigError(
                f"grouped cross-validation needs at least 2 groups, but the {n} rows to divide "
                "into folds all belong to one group"
            )
        if n_groups < k_eff:
            logger.warning(
                "cross-validation: %d groups cannot fill %d folds; using %d", n_groups, k, n_groups
            )
            k_eff = n_groups
        tests = []
        if strata is not None and int(np.unique(strata, return_counts=True)[1].max()) >= k_eff:
            sgkf = StratifiedGroupKFold(k_eff, shuffle=True, random_state=seed)
            tests = _split_with(sgkf, n, strata, codes)
        if not tests or any(len(t) == 0 for t in tests):
            if strata is not None:
                logger.warning(
                    "cross-validation: stratified grouping cannot fill %d folds; splitting the "
                    "%d groups without stratification",
                    k_eff,
                    n_groups,
                )
            gkf = GroupKFold(k_eff, shuffle=True, random_state=seed)
            tests = _split_with(gkf, n, None, codes)
    return [np.sort(rows[t]) for t in tests]
