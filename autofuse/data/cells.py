"""Table cells: when a cell counts as empty, a cell or a column as stripped strings, and a column
read as numbers (:func:`parse_numbers`: numbers, non-finite values, cells that are not numbers)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd


def is_empty(value: Any) -> bool:
    """True for a missing cell: None, NaN, NA, a blank string or an empty list."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, (float, np.floating)):
        return math.isnan(value)
    if isinstance(value, (list, tuple, np.ndarray)):
        return len(value) == 0
    return False


def cell_str(value: Any) -> str | None:
    """A cell as a stripped string, ``None`` when empty; integral floats lose their ``.0``."""
    if is_empty(value):
        return None
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").strip() or None
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return str(int(value)) if float(value).is_integer() else str(float(value))
    return str(value).strip() or None


def column_strings(series: pd.Series) -> list[str | None]:
    """A column as a list of :func:`cell_str` values."""
    return [cell_str(v) for v in series.tolist()]


# ---- numbers -------------------------------------------------------------------------------

#: Cell texts (compared lowercased) that spell "not a number": pandas' default NA strings. In a
#: numeric column they are NaN literals, i.e. non-finite values (see ``non_finite`` in
#: ``dataset.yaml``), not typos.
NAN_MARKERS: frozenset[str] = frozenset(
    {
        "nan",
        "-nan",
        "+nan",
        "n/a",
        "na",
        "#n/a",
        "#n/a n/a",
        "#na",
        "<na>",
        "null",
        "none",
        "1.#ind",
        "-1.#ind",
        "1.#qnan",
        "-1.#qnan",
    }
)

#: A tabular column not declared ``categorical`` is numeric when at least this share of its
#: non-empty cells (NaN literals not counted) are numbers, or when all but one are; the other
#: cells are then reported as problems instead of turning the column categorical.
NUMERIC_MIN_SHARE = 0.9


@dataclass(frozen=True)
class NumericCells:
    """A column read as numbers.

    Attributes:
        values: float64 per row; NaN where the cell is empty, a NaN literal or not a number;
            ``inf`` / ``-inf`` kept (``1e400`` overflows to ``inf``).
        texts: each cell as a stripped string (None when empty), for messages.
        numbers: how many cells hold a number (finite or not; NaN literals not counted).
        non_finite: rows holding ``inf``, ``-inf``, an overflowing number or a NaN literal.
        not_numbers: rows holding text that is not a number (a typo, a word, ``1,5``).
    """

    values: np.ndarray
    texts: list[str | None]
    numbers: int
    non_finite: list[int]
    not_numbers: list[int]

    @property
    def looks_numeric(self) -> bool:
        """Whether the column is numeric by the :data:`NUMERIC_MIN_SHARE` rule."""
        bad = len(self.not_numbers)
        if self.numbers == 0 or bad >= self.numbers:
            return False
        return bad <= 1 or self.numbers >= NUMERIC_MIN_SHARE * (self.numbers + bad)


def is_nan_marker(text: str | None) -> bool:
    """Whether a cell's text spells NaN (``nan``, ``n/a``, ``NULL``, ...; see :data:`NAN_MARKERS`)."""
    return text is not None and text.lower() in NAN_MARKERS


def parse_numbers(series: pd.Series) -> NumericCells:
    """Read a column as numbers, sorting its cells into numbers, non-finite values and others.

    Numeric and boolean columns (Parquet, JSON Lines, DataFrames) hold numbers already: NaN is an
    empty cell there and only ``inf`` / ``-inf`` are non-finite. Text cells are parsed like
    :func:`pandas.to_numeric` (``"inf"``, ``"-Infinity"``, ``"1e400"`` parse, to infinities).
    """
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        texts = [None if math.isnan(v) else str(v) for v in values.tolist()]
        infinite = np.flatnonzero(np.isinf(values)).tolist()
        return NumericCells(values, texts, int((~np.isnan(values)).sum()), infinite, [])
    texts = column_strings(series)
    parsed = pd.to_numeric(pd.Series(texts, dtype=object), errors="coerce")
    values = parsed.to_numpy(dtype=np.float64, na_value=np.nan)
    non_finite: list[int] = []
    not_numbers: list[int] = []
    numbers = 0
    for i, (text, value) in enumerate(zip(texts, values.tolist(), strict=True)):
        if text is None:
            continue
        if math.isnan(value):
            (non_finite if is_nan_marker(text) else not_numbers).append(i)
            continue
        numbers += 1
        if math.isinf(value):
            non_finite.append(i)
    return NumericCells(values, texts, numbers, non_finite, not_numbers)
