"""Reading a dataset: find and validate ``dataset.yaml``, read its table.

Nothing here raises for a problem in the dataset: each function returns the :class:`Problem`
objects it found (a missing or invalid yaml, an unknown key, an unreadable table, ...).
:class:`~autofuse.data.dataset.Dataset` reuses :func:`read_config` and :func:`read_table`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import ValidationError

from autofuse.data.files import _inside
from autofuse.data.problems import Problem
from autofuse.data.schema import TABLE_EXTENSIONS, DatasetConfig

CONFIG_FILE = "dataset.yaml"


def find_config(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Resolve ``path`` (a dataset folder or its yaml file) to ``(root, yaml_path)``."""
    path = Path(os.path.normpath(Path(path).expanduser().absolute()))
    if path.suffix.lower() in (".yaml", ".yml") and not path.is_dir():
        return path.parent, path
    return path, path / CONFIG_FILE


def _loc_key(loc: Sequence[Any]) -> list[str]:
    parts = [str(p) for p in loc]
    if len(parts) >= 2 and parts[0] == "split" and parts[1] in ("column", "ratio"):
        del parts[1]  # drop the discriminated-union tag
    return parts


def config_problems(error: ValidationError, label: str) -> list[Problem]:
    """Translate a pydantic error into one :class:`Problem` per error, naming the yaml key."""
    problems: list[Problem] = []
    for err in error.errors():
        parts = _loc_key(err["loc"])
        if err["type"] == "extra_forbidden":
            parent = ".".join(parts[:-1])
            where = f"{label}, key {parent}" if parent else label
            problems.append(Problem(where, f"unknown key '{parts[-1]}'", "config"))
            continue
        where = f"{label}, key {'.'.join(parts)}" if parts else label
        if err["type"] == "missing":
            message = "missing required key"
        else:
            message = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] not in ("value_error", "assertion_error") and "input" in err:
                message += f" (got {err['input']!r})"
        problems.append(Problem(where, message, "config"))
    return problems


def read_config(yaml_path: Path) -> tuple[DatasetConfig | None, Any, list[Problem]]:
    """Read and validate ``dataset.yaml``.

    Returns:
        ``(config, raw, problems)``: ``config`` is None when the file is missing or invalid;
        ``raw`` is the parsed YAML (or None) so that callers can still look at ``raw["table"]``.
    """
    label = yaml_path.name

    def fail(
        where: str, message: str, kind: str, raw: Any = None
    ) -> tuple[None, Any, list[Problem]]:
        return None, raw, [Problem(where, message, kind)]

    if not yaml_path.parent.is_dir():
        return fail(str(yaml_path.parent), "dataset folder not found", "missing_yaml")
    if not yaml_path.is_file():
        return fail(label, f"not found in {yaml_path.parent}", "missing_yaml")
    try:
        raw = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{label} line {mark.line + 1}" if mark is not None else label
        return fail(where, f"invalid YAML: {getattr(exc, 'problem', None) or exc}", "bad_yaml")
    except (OSError, UnicodeDecodeError) as exc:
        return fail(label, f"cannot read: {exc}", "bad_yaml")
    if not isinstance(raw, dict):
        message = "must be a mapping with keys name, table, target, modalities, ..."
        return fail(label, message, "bad_yaml", raw)
    try:
        return DatasetConfig.model_validate(raw), raw, []
    except ValidationError as exc:
        return None, raw, config_problems(exc, label)


def read_table(
    root: Path, table: str, config_label: str = CONFIG_FILE
) -> tuple[pd.DataFrame | None, list[Problem]]:
    """Read the table (CSV, Parquet or JSON Lines, by extension) with a RangeIndex.

    CSV cells are read as strings (so ``"03"`` stays ``"03"``); empty cells become NaN.

    Returns:
        ``(frame, problems)``; ``frame`` is None when the table cannot be read.
    """
    path = root / table
    ext = path.suffix.lower()
    if ext not in TABLE_EXTENSIONS:
        return None, [
            Problem(
                f"{config_label}, key table",
                f"unsupported table format '{ext or table}' (use .csv, .parquet or .jsonl)",
                "bad_table",
            )
        ]
    if not _inside(root, path):
        return None, [
            Problem(
                f"{config_label}, key table",
                f"table {table} is outside the dataset folder",
                "bad_table",
            )
        ]
    if not path.is_file():
        return None, [Problem(table, f"table file not found in {root}", "missing_table")]
    try:
        if ext == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        elif ext == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_json(path, lines=True, dtype=False, convert_dates=False)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a problem to report
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return None, [Problem(table, f"unreadable table: {reason}", "bad_table")]
    if len(frame) == 0:
        return None, [Problem(table, "table has no rows", "bad_table")]
    frame.columns = [str(c) for c in frame.columns]
    return frame.reset_index(drop=True), []
