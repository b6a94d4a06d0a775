"""Splits: which rows are ``train``, ``val`` or ``test``, from a split column or by ratio.

The functions here compute; the content checker (:mod:`autofuse.data.validate`) turns what they
find into :class:`~autofuse.data.problems.Problem` objects naming rows of the table.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from autofuse.data.schema import SPLIT_NAMES, ColumnSplit, RatioSplit


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


def empty_split_messages(split: np.ndarray, spec: ColumnSplit | RatioSplit, n: int) -> list[str]:
    """One message per split name (train, val, test order) that has no rows in ``split``."""
    messages: list[str] = []
    for name in SPLIT_NAMES:
        if (split == name).any():
            continue
        if isinstance(spec, ColumnSplit):
            messages.append(f"split '{name}' has no rows")
        else:
            messages.append(
                f"split '{name}' gets no rows from the ratio split "
                f"({n} rows, val={spec.val}, test={spec.test}"
                f"{', grouped by ' + spec.group if spec.group else ''})"
            )
    return messages
