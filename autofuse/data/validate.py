"""Dataset validation: check a table's content against its config and report every problem.

Everything here collects :class:`Problem` objects instead of raising, so that one run reports
every problem of a dataset at once. :func:`validate_dataset` is the public entry point;
:class:`~autofuse.data.dataset.Dataset` reuses :func:`read_config`, :func:`read_table` and
:func:`check_content` and raises :class:`DatasetError` when anything was found.

The pieces live in small modules and are re-exported here (old imports keep working):
:mod:`autofuse.data.problems` (problems, errors, reports), :mod:`autofuse.data.cells` (cells),
:mod:`autofuse.data.config_io` (``dataset.yaml`` and the table), :mod:`autofuse.data.files`
(per-sample files) and :mod:`autofuse.data.splits` (split assignment).

Row numbers in messages are 1-based *data* row numbers of the table (the header is not counted),
e.g. ``samples.csv row 17 (id=abc), column image_path: file not found: img/17.png``.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from autofuse.data.cells import (
    NumericCells,
    cell_str,
    column_strings,
    is_empty,
    is_nan_marker,
    parse_numbers,
)
from autofuse.data.config_io import (
    CONFIG_FILE,
    _loc_key,
    config_problems,
    find_config,
    read_config,
    read_table,
)
from autofuse.data.files import (
    _CHECKERS,
    _WAV_FORMATS,
    AUDIO_EXTENSIONS,
    IMAGE_EXTENSIONS,
    TIMESERIES_EXTENSIONS,
    FileCheck,
    _check_memo,
    _inside,
    check_audio,
    check_file,
    check_files,
    check_image,
    check_npy,
    check_wav,
)
from autofuse.data.problems import (
    MAX_LISTED_PER_KIND,
    DatasetError,
    Problem,
    ValidationReport,
    format_problems,
)
from autofuse.data.schema import (
    FILE_MODALITY_TYPES,
    SPLIT_NAMES,
    ColumnSplit,
    DatasetConfig,
    ModalityConfig,
)
from autofuse.data.splits import (
    _systematic,
    bad_split_value,
    class_strata,
    column_split,
    empty_split_messages,
    ratio_split,
)

__all__ = [
    # defined here
    "CellFault",
    "CheckedData",
    "check_content",
    "inspect_dataset",
    "summarize",
    "validate_dataset",
    # autofuse.data.problems
    "MAX_LISTED_PER_KIND",
    "DatasetError",
    "Problem",
    "ValidationReport",
    "format_problems",
    # autofuse.data.cells
    "cell_str",
    "column_strings",
    "is_empty",
    # autofuse.data.config_io
    "CONFIG_FILE",
    "config_problems",
    "find_config",
    "read_config",
    "read_table",
    # autofuse.data.files
    "AUDIO_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "TIMESERIES_EXTENSIONS",
    "FileCheck",
    "check_audio",
    "check_file",
    "check_files",
    "check_image",
    "check_npy",
    "check_wav",
    # autofuse.data.splits
    "bad_split_value",
    "class_strata",
    "column_split",
    "empty_split_messages",
    "ratio_split",
    # private names, importable from here before the split
    "_CHECKERS",
    "_WAV_FORMATS",
    "_check_memo",
    "_inside",
    "_loc_key",
    "_systematic",
]

logger = logging.getLogger(__name__)


#: Problem kinds of cells in numeric tabular columns.
NUMBER_KINDS: frozenset[str] = frozenset({"non_finite", "not_a_number"})


@dataclass(frozen=True)
class CellFault:
    """A cell of a numeric tabular column that holds no usable number, or a timeseries
    ``.npy`` file that holds NaN or infinite values.

    Attributes:
        row: 0-based row.
        modality / column: where the cell is.
        text: the cell as written (for a ``.npy``: its path as written).
        kind: ``non_finite`` (``inf``, ``1e400``, a NaN literal, a ``.npy`` with NaN / inf) or
            ``not_a_number``.
        problem: whether it was reported as a problem (``False``: a non-finite value that the
            ``non_finite: missing`` policy turned into a missing value).
    """

    row: int
    modality: str
    column: str
    text: str
    kind: str
    problem: bool


@dataclass
class CheckedData:
    """Everything :func:`check_content` derived from a config and a table.

    Attributes:
        problems: every problem found.
        frame: the table, normalised: used string columns hold ``str`` or ``None``; numeric
            tabular columns are float64; RangeIndex.
        split: per-row split name ("" where unknown).
        y: targets (classification int64, -1 where missing; regression float32; multilabel
            float32 multi-hot) or None when the target column is missing.
        classes: sorted class names (classification / multilabel) or None.
        present: per modality, bool mask of rows having it.
        paths: per file modality, absolute path per row (None where missing).
        tabular: per tabular modality, ``(numeric, categorical)`` column lists.
        groups: per-row group (object array of ``str``) when the config declares a group
            column (``group`` or ``split.group``) and every row has one; else None.
        cell_faults: cells of numeric tabular columns that hold no usable number (their value
            in ``frame`` is NaN whatever the policy: nothing non-finite is passed on), and
            ``.npy`` files with NaN / inf values (the timeseries preprocessing imputes them).
        notes: things worth saying about a valid dataset (cells treated as missing, a column
            with some numbers typed categorical); listed by ``autofuse data validate``.
    """

    problems: list[Problem] = field(default_factory=list)
    frame: pd.DataFrame | None = None
    split: np.ndarray | None = None
    y: np.ndarray | None = None
    classes: list[str] | None = None
    present: dict[str, np.ndarray] = field(default_factory=dict)
    paths: dict[str, list[Path | None]] = field(default_factory=dict)
    tabular: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)
    groups: np.ndarray | None = None
    cell_faults: list[CellFault] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _did_you_mean(name: str, columns: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(columns), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _rows_text(rows: Sequence[int], limit: int = 5) -> str:
    shown = ", ".join(str(r + 1) for r in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


class _Checker:
    """One run of the content checks; see :func:`check_content`."""

    def __init__(
        self,
        config: DatasetConfig,
        frame: pd.DataFrame,
        root: Path,
        table_label: str,
        config_label: str,
    ) -> None:
        self.config = config
        self.frame = frame.reset_index(drop=True).copy()
        self.frame.columns = [str(c) for c in self.frame.columns]
        self.root = Path(os.path.normpath(os.path.abspath(root)))
        self.table = table_label
        self.cfg_label = config_label
        self.n = len(self.frame)
        self.out = CheckedData(frame=self.frame)
        self.ids: list[str | None] | None = None

    # -- helpers ------------------------------------------------------------------------------

    def add(self, where: str, message: str, kind: str) -> None:
        self.out.problems.append(Problem(where, message, kind))

    def row(self, i: int, column: str | None = None) -> str:
        where = f"{self.table} row {i + 1}"
        if self.ids is not None and self.ids[i] is not None:
            where += f" (id={self.ids[i]})"
        return where + (f", column {column}" if column else "")

    def has(
        self, column: str | None, key: str, kind: str = "unknown_column", what: str = "column"
    ) -> bool:
        if column is None:
            return False
        if column in self.frame.columns:
            return True
        self.add(
            f"{self.cfg_label}, key {key}",
            f"{what} '{column}' not found in {self.table}"
            f"{_did_you_mean(column, self.frame.columns)}",
            kind,
        )
        return False

    def strings(self, column: str) -> list[str | None]:
        values = column_strings(self.frame[column])
        self.frame[column] = pd.Series(values, dtype=object)
        return values

    # -- checks -------------------------------------------------------------------------------

    def run(self) -> CheckedData:
        cfg = self.config
        target = cfg.target.column
        has_target = self.has(target, "target.column", "missing_target_column", "target column")
        if cfg.id_column is not None and self.has(cfg.id_column, "id_column"):
            self.check_ids(cfg.id_column)
        split_col = cfg.split.column if isinstance(cfg.split, ColumnSplit) else None
        group_col, group_key = cfg.group_column, cfg.group_key or "group"
        has_split = self.has(split_col, "split.column") if split_col else False
        has_group = self.has(group_col, group_key) if group_col else False
        if group_col is not None and has_group:
            # read before the modalities: a group column that is also an input keeps its cells
            self.read_groups(
                group_col, used=any(group_col in m.cols for m in cfg.modalities.values())
            )
        # Inputs must not leak the target or the split assignment.
        reserved = {target: "the target"}
        if split_col is not None:
            reserved[split_col] = "the split column"
        for name, mod in cfg.modalities.items():
            key = f"modalities.{name}.{'column' if mod.column is not None else 'columns'}"
            cols = [c for c in mod.cols if self.has(c, key)]
            for c in cols:
                if c in reserved:
                    self.add(
                        f"{self.cfg_label}, key {key}",
                        f"column '{c}' is {reserved[c]} and cannot be an input of "
                        f"modality '{name}'",
                        "bad_column",
                    )
            if len(cols) == len(mod.cols):
                self.check_modality(name, mod)
        if has_target:
            self.read_target(target)
        if split_col is not None:
            if has_split:
                self.assign_split(split_col)
        elif group_col is None or self.out.groups is not None:
            self.assign_split(None)
        if self.out.groups is not None and isinstance(cfg.split, ColumnSplit) and has_split:
            self.note_straddling_groups(group_col or "")
        if has_target and self.out.split is not None:
            if cfg.target.task == "regression":
                self.check_train_values(target)
            else:
                self.check_train_classes(target)
        return self.out

    def check_ids(self, column: str) -> None:
        ids = self.strings(column)
        self.ids = ids
        first: dict[str, int] = {}
        for i, v in enumerate(ids):
            if v is None:
                self.add(self.row(i, column), "empty id", "empty_id")
            elif v in first:
                self.add(
                    self.row(i, column),
                    f"duplicate id '{v}' (first in row {first[v] + 1})",
                    "duplicate_id",
                )
            else:
                first[v] = i

    def check_modality(self, name: str, mod: ModalityConfig) -> None:
        if mod.type in FILE_MODALITY_TYPES:
            present = self.check_file_column(name, mod)
        elif mod.type == "text":
            cells = [self.strings(c) for c in mod.cols]
            present = np.array(
                [any(col[i] is not None for col in cells) for i in range(self.n)], dtype=bool
            )
        else:
            present = self.check_tabular(name, mod)
        self.out.present[name] = present
        if not present.any():
            cols = ", ".join(mod.cols)
            label = "column" if len(mod.cols) == 1 else "columns"
            state = "empty" if mod.type in ("text", "tabular") else "missing"
            self.add(
                f"{self.table}, {label} {cols}",
                f"{mod.type} modality '{name}' is {state} in every row",
                "empty_modality",
            )

    def check_file_column(self, name: str, mod: ModalityConfig) -> np.ndarray:
        column = mod.cols[0]
        values = self.strings(column)
        root = str(self.root)
        prefix = root.rstrip(os.sep) + os.sep
        paths: list[str | None] = [None] * self.n
        for i, rel in enumerate(values):
            if rel is None:
                continue
            full = os.path.normpath(os.path.join(root, rel))
            if not full.startswith(prefix):
                self.add(
                    self.row(i, column), f"path leaves the dataset folder: {rel}", "path_outside"
                )
                continue
            paths[i] = full
        results = check_files(mod.type, [p for p in paths if p is not None])
        channels: dict[int, int] = {}
        non_finite: list[int] = []
        for i, path in enumerate(paths):
            if path is None:
                continue
            res = results[path]
            if res.error == "file not found":
                self.add(self.row(i, column), f"file not found: {values[i]}", "file_not_found")
            elif res.error is not None:
                self.add(self.row(i, column), f"{values[i]}: {res.error}", "unreadable_file")
            elif mod.type == "timeseries" and res.channels is not None:
                channels[i] = res.channels
                if res.non_finite is not None:
                    non_finite.append(i)
                    self.array_fault(name, column, i, values[i] or "", res.non_finite)
        if channels:
            self.check_channels(column, values, channels)
        if non_finite and self.config.non_finite == "missing":
            note = (
                f"{self.table}, column {column}: {len(non_finite)} .npy file(s) with non-finite "
                f"values, treated as missing values (non_finite: missing), rows "
                f"{_rows_text(non_finite)}"
            )
            self.out.notes.append(note)
            logger.info("%s", note)
        self.out.paths[name] = [Path(p) if p is not None else None for p in paths]
        return np.array([v is not None for v in values], dtype=bool)

    def array_fault(self, name: str, column: str, i: int, rel: str, what: str) -> None:
        """A ``.npy`` holding NaN / inf: a problem, or (``non_finite: missing``) missing values
        that the timeseries preprocessing imputes (see ``autofuse.encoders.preprocess``)."""
        problem = self.config.non_finite != "missing"
        self.out.cell_faults.append(CellFault(i, name, column, rel, "non_finite", problem))
        if problem:
            self.add(
                self.row(i, column),
                f"{rel}: {what}; fix the file, or set 'non_finite: missing' in "
                f"{self.cfg_label} to treat such values as missing",
                "non_finite",
            )

    def check_channels(
        self, column: str, values: list[str | None], channels: dict[int, int]
    ) -> None:
        counts = Counter(channels.values())
        if len(counts) < 2:
            return
        ref, n_ref = counts.most_common(1)[0]
        ref_row = next(i for i, c in channels.items() if c == ref)
        for i, c in channels.items():
            if c != ref:
                self.add(
                    self.row(i, column),
                    f"{values[i]} has {c} channels but row {ref_row + 1} has {ref} "
                    f"(like {n_ref} of {len(channels)} files)",
                    "channel_mismatch",
                )

    def check_tabular(self, name: str, mod: ModalityConfig) -> np.ndarray:
        numeric: list[str] = []
        categorical: list[str] = []
        for c in mod.cols:
            if c not in mod.categorical:
                cells = parse_numbers(self.frame[c])
                if c in mod.numeric or cells.looks_numeric:
                    self.check_numbers(name, c, cells, declared=c in mod.numeric)
                    numeric.append(c)
                    continue
                if cells.numbers:
                    present = sum(t is not None for t in cells.texts)
                    self.out.notes.append(
                        f"{self.table}, column {c}: typed categorical (modality '{name}'): only "
                        f"{cells.numbers} of its {present} non-empty cells are numbers; list it "
                        f"under numeric in {self.cfg_label} to have the others reported"
                    )
                logger.info(
                    "tabular column %r of modality %r is not numeric: treated as categorical",
                    c,
                    name,
                )
            self.strings(c)
            categorical.append(c)
        self.out.tabular[name] = (numeric, categorical)
        return ~self.frame[mod.cols].isna().all(axis=1).to_numpy()

    def check_numbers(self, name: str, column: str, cells: NumericCells, declared: bool) -> None:
        """Report the cells of a numeric column that hold no usable number; store the column
        as float64 with NaN in those cells (and in empty ones)."""
        values = cells.values.copy()
        as_missing = self.config.non_finite == "missing"
        present = sum(t is not None for t in cells.texts)
        why = (
            f"listed as numeric in {self.cfg_label}"
            if declared
            else f"{cells.numbers} of its {present} non-empty cells are numbers"
        )
        faults = [(i, "non_finite") for i in cells.non_finite]
        faults += [(i, "not_a_number") for i in cells.not_numbers]
        for i, kind in sorted(faults):
            text = cells.texts[i] or ""
            problem = not (as_missing and kind == "non_finite")
            self.out.cell_faults.append(CellFault(i, name, column, text, kind, problem))
            values[i] = np.nan
            if not problem:
                continue
            if kind == "not_a_number":
                instead = " instead of numeric" if declared else ""
                message = (
                    f"{text!r} is not a number, in a numeric column ({why}); fix the cell, "
                    f"leave it empty, or list '{column}' under categorical{instead} of "
                    f"modality '{name}'"
                )
            else:
                if is_nan_marker(text):
                    what = f"{text!r} is a NaN literal, not a number"
                elif text.lstrip("+-").lower() in ("inf", "infinity"):
                    what = f"{text!r} is not a finite number"
                else:
                    what = f"{text!r} is not a finite number (it overflows to infinity)"
                message = (
                    f"{what}; fix the cell, leave it empty, or set 'non_finite: missing' in "
                    f"{self.cfg_label} to treat such cells as missing"
                )
            self.add(self.row(i, column), message, kind)
        if as_missing and cells.non_finite:
            rows = cells.non_finite
            note = (
                f"{self.table}, column {column}: {len(rows)} non-finite value(s) treated as "
                f"missing (non_finite: missing), rows {_rows_text(rows)}"
            )
            self.out.notes.append(note)  # in the summary: data validate lists it
            logger.info("%s", note)
        self.frame[column] = values

    def read_target(self, column: str) -> None:
        task = self.config.target.task
        raw = self.frame[column].tolist()
        if task == "regression":
            y = np.full(self.n, np.nan, dtype=np.float32)
            for i, v in enumerate(raw):
                if is_empty(v):
                    self.add(self.row(i, column), "empty target", "empty_target")
                    continue
                try:
                    value = float(v)
                except (TypeError, ValueError):
                    self.add(self.row(i, column), f"target {v!r} is not a number", "bad_target")
                    continue
                if not math.isfinite(value):
                    self.add(self.row(i, column), f"target {v!r} is not finite", "bad_target")
                    continue
                y[i] = value
            self.frame[column] = y.astype(np.float64)
            self.out.y = y
            return
        if task == "classification":
            labels = self.strings(column)
            for i, v in enumerate(labels):
                if v is None:
                    self.add(self.row(i, column), "empty target", "empty_target")
            classes = sorted({v for v in labels if v is not None})
            index = {c: k for k, c in enumerate(classes)}
            self.out.classes = classes
            self.out.y = np.array(
                [index[v] if v is not None else -1 for v in labels], dtype=np.int64
            )
            return
        sep = self.config.target.separator
        per_row: list[list[str]] = []
        for i, v in enumerate(raw):
            if isinstance(v, (list, tuple, np.ndarray)):
                items = [s for s in (cell_str(x) for x in v) if s is not None]
            else:
                text = cell_str(v)
                items = [s.strip() for s in text.split(sep) if s.strip()] if text else []
            if not items:
                self.add(self.row(i, column), "empty target", "empty_target")
            per_row.append(sorted(set(items)))
        classes = sorted({c for items in per_row for c in items})
        index = {c: k for k, c in enumerate(classes)}
        y = np.zeros((self.n, len(classes)), dtype=np.float32)
        for i, items in enumerate(per_row):
            y[i, [index[c] for c in items]] = 1.0
        self.frame[column] = pd.Series([sep.join(items) or None for items in per_row], dtype=object)
        self.out.classes = classes
        self.out.y = y

    def read_groups(self, column: str, used: bool) -> None:
        """Per-row groups into ``out.groups``; an empty cell is a problem naming its row (a row
        without a group could not be kept apart from the rows it depends on) and leaves
        ``out.groups`` None. ``used``: the column is also a modality input, whose cells the
        modality checks normalise themselves (so the frame is not rewritten here)."""
        groups = column_strings(self.frame[column]) if used else self.strings(column)
        empty = [i for i, g in enumerate(groups) if g is None]
        for i in empty:
            self.add(
                self.row(i, column),
                "empty group value; give every row its group (rows of a group are kept together)",
                "empty_group",
            )
        if not empty:
            self.out.groups = np.array(groups, dtype=object)

    def note_straddling_groups(self, column: str) -> None:
        """A note (not a problem) when the split column puts one group in several splits: the
        test figure is then not free of that group, though the folds still are."""
        assert self.out.groups is not None and self.out.split is not None
        seen: dict[str, set[str]] = {}
        for g, s in zip(self.out.groups.tolist(), self.out.split.tolist(), strict=True):
            if s:
                seen.setdefault(g, set()).add(s)
        mixed = sorted(g for g, splits in seen.items() if len(splits) > 1)
        if not mixed:
            return
        first = mixed[0]
        note = (
            f"{self.table}, column {column}: {len(mixed)} group(s) have rows in more than one "
            f"split (e.g. '{first}': {', '.join(s for s in SPLIT_NAMES if s in seen[first])}); "
            "cross-validation folds keep groups whole, but val / test rows then share groups "
            "with training rows"
        )
        self.out.notes.append(note)
        logger.info("%s", note)

    def assign_split(self, split_col: str | None) -> None:
        spec = self.config.split
        if isinstance(spec, ColumnSplit):
            assert split_col is not None
            values = self.strings(split_col)
            split = column_split(values)
            for i, v in enumerate(values):
                message = bad_split_value(v)
                if message is not None:
                    self.add(self.row(i, split_col), message, "bad_split_value")
            where = f"{self.table}, column {split_col}"
        else:
            groups = None if self.out.groups is None else self.out.groups.tolist()
            strata = class_strata(self.config.target.task, self.out.y)
            split = ratio_split(self.n, spec, strata=strata, groups=groups)
            where = f"{self.cfg_label}, key split"
        group = self.config.group_column
        for message in empty_split_messages(split, spec, self.n, group=group):
            self.add(where, message, "empty_split")
        self.out.split = split

    def check_train_classes(self, column: str) -> None:
        assert (
            self.out.y is not None and self.out.classes is not None and self.out.split is not None
        )
        y, split = self.out.y, self.out.split
        member = (y[:, None] == np.arange(len(self.out.classes))[None, :]) if y.ndim == 1 else y > 0
        in_train = member[split == "train"].any(axis=0)
        for k, cls in enumerate(self.out.classes):
            if in_train[k]:
                continue
            rows = np.flatnonzero(member[:, k] & (split != "")).tolist()
            if not rows:
                continue
            self.add(
                f"{self.table}, column {column}",
                f"class '{cls}' has no training sample (only in val/test rows {_rows_text(rows)}): "
                "no model could learn to predict it, so the search refuses the dataset; move "
                "some of its rows to train, or drop them",
                "class_without_train",
            )
        train = split == "train"
        labelled = train & (member.any(axis=1) if y.ndim == 2 else y >= 0)
        if labelled.sum() < 2:  # one training row (a tiny frame to predict on) says nothing
            return
        if y.ndim == 1:
            seen = [c for k, c in enumerate(self.out.classes) if in_train[k]]
            if len(seen) == 1:
                self.add(
                    f"{self.table}, column {column}",
                    f"every training row has the class '{seen[0]}': a model could only ever "
                    "predict it; the train split needs at least two classes",
                    "single_class",
                )
            return
        sets = member[labelled]
        if (sets == sets[0]).all():  # multilabel: the same labels in every training row
            labels = "|".join(c for k, c in enumerate(self.out.classes) if sets[0, k]) or "(none)"
            self.add(
                f"{self.table}, column {column}",
                f"every training row has the same labels '{labels}': a model could only ever "
                "predict them; the train split needs rows with different labels",
                "single_class",
            )

    def check_train_values(self, column: str) -> None:
        """A regression target that is the same number in every training row (two or more) has
        nothing to learn: a problem naming the column."""
        assert self.out.y is not None and self.out.split is not None
        values = self.out.y[(self.out.split == "train") & np.isfinite(self.out.y)]
        if len(values) > 1 and float(values.min()) == float(values.max()):
            self.add(
                f"{self.table}, column {column}",
                f"the target is constant on the train split (all {len(values)} training rows "
                f"have {float(values[0]):g}): a model could only ever predict that value",
                "constant_target",
            )


def check_content(
    config: DatasetConfig,
    frame: pd.DataFrame,
    root: Path,
    table_label: str | None = None,
    config_label: str = CONFIG_FILE,
) -> CheckedData:
    """Check a table against its config: columns, ids, targets, splits, files, modalities.

    Args:
        config: the validated config.
        frame: the raw table.
        root: folder that relative file paths are resolved against.
        table_label: how messages name the table (default: ``config.table``).
        config_label: how messages name the config (``dataset.yaml`` or ``config``).

    Returns:
        The derived data and every problem found; never raises for dataset problems.
    """
    start = time.perf_counter()
    checked = _Checker(config, frame, root, table_label or config.table, config_label).run()
    logger.debug(
        "checked %d rows in %.2fs: %d problems",
        len(frame),
        time.perf_counter() - start,
        len(checked.problems),
    )
    return checked


def summarize(config: DatasetConfig, checked: CheckedData) -> dict[str, Any]:
    """JSON-able summary: task, rows per split, modalities, classes, missing rates."""
    n = len(checked.frame) if checked.frame is not None else 0
    split = checked.split if checked.split is not None else np.full(n, "", dtype=object)
    summary: dict[str, Any] = {
        "name": config.name,
        "task": config.target.task,
        "target": config.target.column,
        "rows": n,
        "splits": {s: int((split == s).sum()) for s in SPLIT_NAMES},
        "classes": checked.classes,
        "modalities": {name: mod.type for name, mod in config.modalities.items()},
        "group": config.group_column,
        "missing_rate": {
            name: round(float(1.0 - checked.present[name].mean()), 6) if n else 0.0
            for name in config.modalities
            if name in checked.present
        },
    }
    if checked.classes is not None and checked.y is not None:
        y = checked.y
        counts = np.bincount(y[y >= 0], minlength=len(checked.classes)) if y.ndim == 1 else y.sum(0)
        summary["class_counts"] = {c: int(k) for c, k in zip(checked.classes, counts, strict=True)}
    if checked.groups is not None:
        summary["groups"] = len(set(checked.groups.tolist()))
    if checked.notes:
        summary["notes"] = list(checked.notes)
    return summary


def inspect_dataset(path: str | os.PathLike[str]) -> tuple[DatasetConfig | None, Path, CheckedData]:
    """Read and check a dataset folder, collecting every problem.

    Returns:
        ``(config, root, checked)``; ``config`` is None and ``checked.frame`` may be None when
        the yaml or the table could not be read.
    """
    root, yaml_path = find_config(path)
    config, raw, problems = read_config(yaml_path)
    if config is None:
        # Still report a missing/unreadable table alongside the yaml problems.
        if isinstance(raw, dict) and isinstance(raw.get("table"), str) and raw["table"]:
            problems += read_table(root, raw["table"], yaml_path.name)[1]
        return None, root, CheckedData(problems=problems)
    frame, table_problems = read_table(root, config.table, yaml_path.name)
    if frame is None:
        return config, root, CheckedData(problems=table_problems)
    return config, root, check_content(config, frame, root, config.table, yaml_path.name)


def validate_dataset(path: str | os.PathLike[str]) -> ValidationReport:
    """Validate a dataset folder (or its ``dataset.yaml``) and report every problem.

    Never raises for problems in the dataset; they are returned.

    Args:
        path: the dataset folder or its yaml file.

    Returns:
        A :class:`ValidationReport`; its ``summary`` is set when there is no problem.
    """
    config, _, checked = inspect_dataset(path)
    summary = summarize(config, checked) if config is not None and not checked.problems else None
    return ValidationReport(problems=checked.problems, summary=summary)
