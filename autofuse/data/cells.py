"""Table cells: when a cell counts as empty, and a cell or a column as stripped strings."""

from __future__ import annotations

import math
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
