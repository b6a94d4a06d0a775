"""Infer a :class:`~autofuse.data.schema.DatasetConfig` from a pandas DataFrame.

Rules (applied to a column's non-empty values):

* every value a path ending in an image extension -> ``image``; ``.wav`` / ``.flac`` ->
  ``audio``; ``.npy`` -> ``timeseries``;
* numbers and booleans -> tabular (numeric); a column whose cells are nearly all numbers (see
  :data:`~autofuse.data.cells.NUMERIC_MIN_SHARE`) is numeric too, and validation reports its other
  cells (a typo does not turn it categorical);
* long strings (mean length above :data:`TEXT_MIN_MEAN_LENGTH`) or many distinct multi-word
  values -> ``text``;
* other strings with few distinct values -> tabular (categorical);
* many distinct single-word strings look like identifiers and are skipped.

All tabular columns go into one modality named ``tabular``. Each other column becomes its own
modality, named after the column (made into an identifier).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import pandas as pd

from autofuse.data.cells import parse_numbers
from autofuse.data.schema import SPLIT_NAMES, Task
from autofuse.data.validate import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, column_strings

logger = logging.getLogger(__name__)

TEXT_MIN_MEAN_LENGTH = 30
#: More distinct values than this (and than half the rows) makes a string column "high cardinality".
MAX_CATEGORIES = 20
#: Regression is inferred for numeric targets with non-integral values and more distinct values
#: than this, or integral ones with more than :data:`MAX_INT_CLASSES`.
MIN_REGRESSION_DISTINCT = 10
MAX_INT_CLASSES = 50

TABULAR = "tabular"
_ID_NAMES = ("id", "sample_id", "uid")


def _numbers(values: list[str | None], series: pd.Series) -> pd.Series | None:
    """The column's non-empty values as floats, or None when some are not numbers."""
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        return pd.to_numeric(series, errors="coerce").dropna().astype(float)
    present = [v for v in values if v is not None]
    parsed = pd.to_numeric(pd.Series(present, dtype=object), errors="coerce")
    return parsed.astype(float) if parsed.notna().all() else None


def infer_column_kind(series: pd.Series) -> str | None:
    """Kind of one column.

    Returns:
        ``image``, ``audio``, ``timeseries``, ``text``, ``numeric``, ``categorical``, or None for
        a column to skip (empty, or an identifier-like column of unique words).
    """
    values = column_strings(series)
    present = [v for v in values if v is not None]
    if not present:
        return None
    if parse_numbers(series).looks_numeric:
        return "numeric"
    lowered = [v.lower() for v in present]
    for kind, exts in (
        ("image", IMAGE_EXTENSIONS),
        ("audio", AUDIO_EXTENSIONS),
        ("timeseries", (".npy",)),
    ):
        if all(v.endswith(exts) for v in lowered):
            return kind
    distinct = len(set(present))
    mean_length = sum(map(len, present)) / len(present)
    many = distinct > max(MAX_CATEGORIES, len(present) // 2)
    multi_word = sum(len(v.split()) > 1 for v in present) > len(present) / 2
    if mean_length > TEXT_MIN_MEAN_LENGTH or (many and multi_word):
        return "text"
    if many:
        return None
    return "categorical"


def infer_task(series: pd.Series) -> Task:
    """``regression`` for numbers with many distinct values, else ``classification``."""
    values = column_strings(series)
    numbers = _numbers(values, series)
    if numbers is None or pd.api.types.is_bool_dtype(series):
        return "classification"
    distinct = numbers.nunique()
    integral = bool((numbers == numbers.round()).all())
    if (not integral and distinct > MIN_REGRESSION_DISTINCT) or distinct > MAX_INT_CLASSES:
        return "regression"
    return "classification"


def infer_id_column(df: pd.DataFrame, exclude: set[str]) -> str | None:
    """A column named like an id (``id``, ``sample_id``, ``uid``) whose values are all unique."""
    for column in df.columns:
        if column in exclude or str(column).lower() not in _ID_NAMES:
            continue
        values = column_strings(df[column])
        if None not in values and len(set(values)) == len(values):
            return str(column)
    return None


def infer_split(df: pd.DataFrame, exclude: set[str]) -> dict[str, Any] | None:
    """``{"column": "split"}`` when a column named ``split`` holds only train / val / test."""
    if "split" in df.columns and "split" not in exclude:
        values = set(column_strings(df["split"]))
        if values and values <= set(SPLIT_NAMES):
            return {"column": "split"}
    return None


def _identifier(name: str, taken: set[str]) -> str:
    base = re.sub(r"\W+", "_", name).strip("_") or "modality"
    if base[0].isdigit():
        base = f"m_{base}"
    candidate, k = base, 2
    while candidate in taken:
        candidate, k = f"{base}_{k}", k + 1
    return candidate


def infer_modalities(df: pd.DataFrame, exclude: set[str]) -> dict[str, dict[str, Any]]:
    """Modalities for every column not in ``exclude`` (see the module docstring for the rules)."""
    modalities: dict[str, dict[str, Any]] = {}
    numeric: list[str] = []
    categorical: list[str] = []
    for column in df.columns:
        column = str(column)
        if column in exclude:
            continue
        kind = infer_column_kind(df[column])
        if kind is None:
            logger.info("column %r skipped: empty or identifier-like", column)
        elif kind == "numeric":
            numeric.append(column)
        elif kind == "categorical":
            categorical.append(column)
        else:
            name = _identifier(column, set(modalities) | {TABULAR})
            modalities[name] = {"type": kind, "column": column}
    if numeric or categorical:
        tab_cols = [str(c) for c in df.columns if c in numeric or c in categorical]
        modalities[TABULAR] = {"type": "tabular", "columns": tab_cols, "categorical": categorical}
    for name, mod in modalities.items():
        logger.info("inferred modality %r: %s", name, mod)
    return modalities


def complete_modality(df: pd.DataFrame, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Fill a user-given modality's missing ``type`` (and tabular ``categorical``) by inference."""
    spec = dict(spec)
    cols = [spec["column"]] if "column" in spec else list(spec.get("columns") or [])
    known = [c for c in cols if c in df.columns]
    if "type" not in spec:
        if len(cols) == 1 and known:
            kind = infer_column_kind(df[known[0]])
            spec["type"] = kind if kind in ("image", "audio", "timeseries", "text") else "tabular"
        else:
            spec["type"] = "tabular"
        logger.info("modality %r: inferred type %s", name, spec["type"])
    if spec["type"] == "tabular" and "categorical" not in spec:
        spec["categorical"] = [c for c in known if infer_column_kind(df[c]) == "categorical"]
    return spec


def infer_config(
    df: pd.DataFrame,
    target: str,
    modalities: dict[str, dict[str, Any]] | None = None,
    task: str | None = None,
    split: dict[str, Any] | None = None,
    name: str = "dataframe",
    id_column: str | None = None,
    group: str | None = None,
) -> dict[str, Any]:
    """Build the raw config dict for :meth:`Dataset.from_dataframe` (validated by the caller).

    Args:
        df: the table.
        target: target column.
        modalities: yaml-like modality dict; entries may omit ``type``. None infers all.
        task: classification | regression | multilabel; None infers it from the target.
        split: yaml-like split dict; None uses a ``split`` column holding only train/val/test
            if there is one, else ``{val: 0.15, test: 0.15, seed: 0}``.
        name: dataset name.
        id_column: id column; None picks a unique column named ``id`` / ``sample_id`` / ``uid``.
        group: the group column (``group`` in ``dataset.yaml``); never inferred as an input.

    Returns:
        A dict in the shape of ``dataset.yaml``.
    """
    if task is None:
        task = infer_task(df[target]) if target in df.columns else "classification"
        logger.info("target %r: inferred task %s", target, task)
    exclude = {target}
    if group is not None:
        exclude.add(group)
    if id_column is None:
        id_column = infer_id_column(df, exclude)
    if id_column is not None:
        exclude.add(id_column)
    if split is None:
        split = infer_split(df, exclude) or {"val": 0.15, "test": 0.15, "seed": 0}
    if isinstance(split, dict):
        exclude.update(str(split[k]) for k in ("column", "group") if split.get(k))
    if modalities is None:
        mods = infer_modalities(df, exclude)
    else:
        mods = {
            k: complete_modality(df, k, v) if isinstance(v, dict) else v
            for k, v in modalities.items()
        }
    config: dict[str, Any] = {
        "name": name,
        "table": "dataframe",
        "target": {"column": target, "task": task},
        "split": split,
        "modalities": mods,
    }
    if id_column is not None:
        config["id_column"] = id_column
    if group is not None:
        config["group"] = group
    return config
