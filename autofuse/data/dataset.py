"""The validated, in-memory view of a dataset folder (or a DataFrame).

Example::

    ds = Dataset.load("datasets/avmnist")          # raises DatasetError listing every problem
    train = ds.indices("train")
    paths = ds.file_paths("digit_image")            # absolute paths, None where missing
    y = ds.y[train]
    groups = ds.groups()                            # per-row group (subject, ...) or None
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from autofuse.data.infer import infer_config
from autofuse.data.schema import (
    FILE_MODALITY_TYPES,
    SPLIT_NAMES,
    TABLE_EXTENSIONS,
    DatasetConfig,
    RatioSplit,
)
from autofuse.data.validate import (
    NUMBER_KINDS,
    CheckedData,
    DatasetError,
    Problem,
    cell_str,
    check_content,
    check_file,
    config_problems,
    find_config,
    inspect_dataset,
    read_config,
    read_table,
    summarize,
)

logger = logging.getLogger(__name__)

_file_digests: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """sha256 hex of a file's bytes, memoised per process by (path, size, mtime_ns)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    digest = _file_digests.get(key)
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = _file_digests[key] = h.hexdigest()
    return digest


class Dataset:
    """A validated multimodal dataset: one row per sample, targets, splits and modalities.

    Build it with :meth:`load` (a folder with ``dataset.yaml``) or :meth:`from_dataframe`.
    Constructing it runs every check; any problem raises :class:`DatasetError` listing them all.

    Attributes:
        name: dataset name.
        root: folder that relative file paths are resolved against.
        config: the validated :class:`DatasetConfig`.
        frame: the table with a RangeIndex. Columns used by the config are normalised: string
            columns hold ``str`` or ``None`` (empty cell), numeric tabular columns are float64,
            a regression target is float64; unused columns are as read (CSV: strings / NaN).
        task: ``classification`` | ``regression`` | ``multilabel``.
        classes: sorted class names (classification / multilabel), None for regression.
        y: classification int64 ``[N]``; regression float32 ``[N]``; multilabel float32
            multi-hot ``[N, C]``.
        split: per-row ``"train"`` | ``"val"`` | ``"test"`` (object array of str).
        modality_names: modality names in config order.
        group_column: the column holding each row's group (``group`` in ``dataset.yaml``, else
            a ratio split's ``group``), or None; see :meth:`groups`.
    """

    def __init__(
        self,
        config: DatasetConfig,
        frame: pd.DataFrame,
        root: str | os.PathLike[str],
        *,
        table_label: str | None = None,
        config_label: str = "dataset.yaml",
    ) -> None:
        """Check ``frame`` against ``config`` and build the dataset.

        Args:
            config: validated config.
            frame: the raw table.
            root: folder for relative file paths.
            table_label: how problems name the table (default ``config.table``).
            config_label: how problems name the config.

        Raises:
            DatasetError: listing every problem found.
        """
        root = Path(os.path.normpath(Path(root).absolute()))
        checked = check_content(config, frame, root, table_label, config_label)
        if checked.problems:
            raise DatasetError(checked.problems, source=str(root))
        self._init_checked(config, root, checked)

    def _init_checked(self, config: DatasetConfig, root: Path, checked: CheckedData) -> None:
        assert checked.frame is not None and checked.split is not None and checked.y is not None
        self.config = config
        self.name = config.name
        self.root = root
        self.frame = checked.frame
        self.task = config.target.task
        self.classes = checked.classes
        self.y = checked.y
        self.split = checked.split.astype(str).astype(object)
        self.modality_names = list(config.modalities)
        self.group_column = config.group_column
        self._checked = checked
        self._fingerprint: str | None = None
        logger.info(
            "dataset %s: %d rows (%s), task %s, modalities %s",
            self.name,
            len(self),
            ", ".join(f"{s} {len(self.indices(s))}" for s in SPLIT_NAMES),
            self.task,
            ", ".join(f"{n}:{self.modality_type(n)}" for n in self.modality_names),
        )

    # -- constructors -------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Dataset:
        """Load and validate a dataset folder (or its ``dataset.yaml``).

        Args:
            path: the folder holding ``dataset.yaml`` and the table, or the yaml file itself.

        Raises:
            DatasetError: listing every problem found (yaml, table, rows, files, splits).
        """
        config, root, checked = inspect_dataset(path)
        if config is None or checked.problems:
            raise DatasetError(checked.problems, source=str(root))
        self = cls.__new__(cls)
        self._init_checked(config, root, checked)
        return self

    @classmethod
    def from_dataframe(
        cls,
        df: pd.DataFrame,
        target: str,
        modalities: dict[str, dict[str, Any]] | None = None,
        task: str | None = None,
        split: dict[str, Any] | None = None,
        root: str | os.PathLike[str] | None = None,
        name: str = "dataframe",
        id_column: str | None = None,
        group: str | None = None,
    ) -> Dataset:
        """Build a dataset from a DataFrame, inferring what is not given.

        Args:
            df: one row per sample.
            target: the target column.
            modalities: yaml-like ``{name: {type, column | columns, categorical}}``; ``type``
                may be omitted per entry. None infers modalities from every other column
                (see :mod:`autofuse.data.infer`).
            task: classification | regression | multilabel; None infers it.
            split: yaml-like split (``{"column": ...}`` or ``{"val", "test", "seed", "group"}``);
                None uses a ``split`` column of train/val/test values if present, else a ratio
                split ``{val: 0.15, test: 0.15, seed: 0}``.
            root: folder relative file paths are resolved against (default: the working
                directory).
            name: dataset name.
            id_column: id column; None uses a unique column named ``id`` if there is one.
            group: column holding each row's group (subject, session, ...), like ``group`` in
                ``dataset.yaml``: cross-validation folds and a ratio split keep each group whole.
                It is not inferred as an input modality.

        Raises:
            DatasetError: listing every problem found.
        """
        raw = infer_config(df, target, modalities, task, split, name, id_column, group)
        try:
            config = DatasetConfig.model_validate(raw)
        except ValidationError as exc:
            raise DatasetError(config_problems(exc, "config")) from None
        return cls(
            config,
            df,
            Path.cwd() if root is None else root,
            table_label="dataframe",
            config_label="config",
        )

    @classmethod
    def for_prediction(
        cls,
        data: str | os.PathLike[str] | pd.DataFrame,
        config: DatasetConfig | dict[str, Any] | None,
        *,
        root: str | os.PathLike[str] | None = None,
        bad_files: str = "error",
    ) -> Dataset:
        """Rows to predict on, read with a trained model's dataset config.

        Unlike :meth:`load`, the target column is optional (read when present, its values are not
        checked), the split is ignored (``split`` is ``""`` in every row) and a modality may be
        missing in any row, even in every row. Columns, ids and per-sample files are checked as
        usual and every problem is reported at once.

        Args:
            data: a dataset folder (its table is the one its ``dataset.yaml`` names, else
                ``config.table``, else its only table file), a table file, or a DataFrame.
            config: the training dataset's config (which columns hold which modality); None uses
                the folder's ``dataset.yaml``.
            root: for a DataFrame, the folder that relative file paths are resolved against
                (default: the working directory); absolute paths are used as they are.
            bad_files: ``"error"``: a missing or unreadable per-sample file, a non-finite value
                (in a numeric column or a timeseries ``.npy``) or a cell that is not a number in
                a numeric column is a problem (a non-finite value counts as missing instead where
                the config says ``non_finite: missing``); ``"missing"``: such a cell counts as
                missing (a file: the modality is missing in that row; a number: a missing value
                of its column; NaN / inf in a ``.npy``: missing values, imputed) and is listed in the
                ``skipped`` (files) or ``skipped_numbers`` attribute and, per row, in
                ``row_missing``.

        Raises:
            DatasetError: listing every problem found (a column a modality needs is absent, a
                duplicate id, a bad file, ...).
        """
        if bad_files not in ("error", "missing"):
            raise ValueError(f"bad_files must be 'error' or 'missing', got {bad_files!r}")
        if isinstance(data, pd.DataFrame):
            if config is None:
                raise DatasetError(
                    [
                        Problem(
                            "config",
                            "a DataFrame needs the model's dataset config",
                            "missing_config",
                        )
                    ]
                )
            frame, table_label = data, "dataframe"
            base = Path(root or Path.cwd()).expanduser().absolute()
            folder = Path(base.anchor)  # paths are made absolute below: any location is allowed
        else:
            path = Path(data).expanduser().absolute()
            if path.is_file() and path.suffix.lower() in TABLE_EXTENSIONS:
                folder, table = path.parent, path.name
            else:
                folder, yaml_path = find_config(path)
                if not folder.is_dir():
                    raise DatasetError(
                        [Problem(str(folder), "dataset folder not found", "missing_yaml")]
                    )
                own, raw, problems = (
                    read_config(yaml_path) if yaml_path.is_file() else (None, None, [])
                )
                if config is None:
                    if own is None:
                        raise DatasetError(
                            problems or [Problem(str(yaml_path), "not found", "missing_yaml")],
                            source=str(folder),
                        )
                    config = own
                tables = sorted(
                    p.name for p in folder.iterdir() if p.suffix.lower() in TABLE_EXTENSIONS
                )
                cfg_table = (
                    config.table if isinstance(config, DatasetConfig) else config.get("table")
                )
                if isinstance(raw, dict) and isinstance(raw.get("table"), str):
                    table = raw["table"]
                elif cfg_table and (folder / cfg_table).is_file():
                    table = cfg_table
                elif len(tables) == 1:
                    table = tables[0]
                else:
                    found = ", ".join(tables) or "none"
                    raise DatasetError(
                        [
                            Problem(
                                str(folder),
                                "cannot tell which table to read "
                                f"(no dataset.yaml; table files: {found})",
                                "missing_table",
                            )
                        ]
                    )
            frame, problems = read_table(folder, table, "dataset.yaml")
            if frame is None:
                raise DatasetError(problems, source=str(folder))
            table_label = table
        cfg = config if isinstance(config, DatasetConfig) else DatasetConfig.model_validate(config)
        frame = frame.reset_index(drop=True).copy()
        frame.columns = [str(c) for c in frame.columns]
        absent = [
            Problem(
                table_label,
                f"modality '{m}' ({mod.type}) needs column '{c}', which is missing",
                "missing_modality_column",
            )
            for m, mod in cfg.modalities.items()
            for c in mod.cols
            if c not in frame.columns
        ]
        if absent:
            raise DatasetError(absent, source=str(folder))
        if isinstance(data, pd.DataFrame):
            for mod in cfg.modalities.values():
                if mod.type in FILE_MODALITY_TYPES:
                    frame[mod.cols[0]] = [
                        None
                        if (s := cell_str(v)) is None
                        else str(base / s)
                        if not os.path.isabs(s)
                        else s
                        for v in frame[mod.cols[0]].tolist()
                    ]
        update: dict[str, Any] = {"split": RatioSplit(), "group": None}  # no groups needed
        if cfg.id_column is not None and cfg.id_column not in frame.columns:
            update["id_column"] = None
        cfg = cfg.model_copy(update=update)
        checked = check_content(cfg, frame, folder, table_label, "model config")
        ignored = {
            "missing_target_column",
            "empty_target",
            "bad_target",
            "class_without_train",
            "single_class",
            "constant_target",
            "empty_split",
            "empty_modality",
        }
        skipped: list[str] = []
        skipped_numbers: list[str] = []
        row_missing: dict[int, list[str]] = {}
        if bad_files == "missing":
            ignored |= {"file_not_found", "unreadable_file"} | NUMBER_KINDS
            for m, mod in cfg.modalities.items():
                for i, p in enumerate(checked.paths.get(m, [])):
                    error = None if p is None else check_file(mod.type, p).error
                    if error is not None:
                        skipped.append(f"{table_label} row {i + 1}, modality {m}: {p}: {error}")
                        row_missing.setdefault(i, []).append(f"{m} ({error})")
                        checked.paths[m][i] = None
                        checked.present[m][i] = False
            by_row = sorted(checked.cell_faults, key=lambda f: f.row)
            for f in by_row:  # the frame holds NaN there already
                reason = "not finite" if f.kind == "non_finite" else "not a number"
                skipped_numbers.append(
                    f"{table_label} row {f.row + 1}, column {f.column}: {f.text!r} ({reason})"
                )
                row_missing.setdefault(f.row, []).append(f"{f.modality}.{f.column} ({reason})")
        problems = [p for p in checked.problems if p.kind not in ignored]
        if problems:
            raise DatasetError(problems, source=str(folder))
        self = cls.__new__(cls)
        self.config, self.name, self.root = cfg, cfg.name, folder
        self.frame = checked.frame
        self.task = cfg.target.task
        self.classes = checked.classes  # of the target values present here, if any
        self.y = checked.y  # None when the table has no target column
        self.split = np.full(len(checked.frame), "", dtype=object)
        self.modality_names = list(cfg.modalities)
        self.group_column = None
        self._checked = checked
        self._fingerprint = None
        self.table_label = table_label
        self.skipped = skipped
        self.skipped_numbers = skipped_numbers
        self.row_missing = row_missing
        return self

    def row_label(self, i: int) -> str:
        """How messages name row ``i`` (0-based): ``samples.csv row 3 (id=s3)``."""
        where = f"{getattr(self, 'table_label', None) or self.config.table} row {i + 1}"
        id_col = self.config.id_column
        if id_col is not None and id_col in self.frame.columns:
            value = cell_str(self.frame[id_col].iloc[i])
            if value is not None:
                where += f" (id={value})"
        return where

    # -- accessors ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.frame)

    def __repr__(self) -> str:
        mods = ", ".join(f"{n}={self.modality_type(n)}" for n in self.modality_names)
        return f"Dataset({self.name!r}, rows={len(self)}, task={self.task}, {mods})"

    def groups(self) -> np.ndarray | None:
        """Per-row group (object array of ``str``, ``[N]``) from :attr:`group_column`, or None
        when the dataset declares no group. Rows sharing a value belong together: a
        cross-validation fold (:func:`autofuse.data.splits.cv_folds`) never splits them."""
        groups = self._checked.groups
        return None if groups is None or self.group_column is None else groups.copy()

    def indices(self, split: str) -> np.ndarray:
        """int64 row indices of one split (``train``, ``val`` or ``test``)."""
        if split not in SPLIT_NAMES:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLIT_NAMES}")
        return np.flatnonzero(self.split == split).astype(np.int64)

    def _modality(self, name: str, *types: str) -> list[str]:
        if name not in self.config.modalities:
            raise KeyError(f"unknown modality {name!r}; this dataset has {self.modality_names}")
        mod = self.config.modalities[name]
        if types and mod.type not in types:
            raise TypeError(f"modality {name!r} is {mod.type}, not {' or '.join(types)}")
        return mod.cols

    def modality_type(self, name: str) -> str:
        """``image`` | ``audio`` | ``text`` | ``tabular`` | ``timeseries``."""
        self._modality(name)
        return self.config.modalities[name].type

    def present(self, name: str) -> np.ndarray:
        """bool ``[N]``: True where the row has the modality (for multi-column modalities: at
        least one non-empty cell)."""
        self._modality(name)
        return self._checked.present[name].copy()

    def file_paths(self, name: str) -> list[Path | None]:
        """Absolute path per row for an image / audio / timeseries modality, None where missing."""
        self._modality(name, *FILE_MODALITY_TYPES)
        return list(self._checked.paths[name])

    def texts(self, name: str) -> list[str | None]:
        """Per row the text (several columns joined with a newline), None where all empty."""
        cols = self._modality(name, "text")
        cells = self.frame[cols].to_numpy(dtype=object)
        return ["\n".join(c for c in row if c is not None) or None for row in cells]

    def tabular_frame(self, name: str) -> pd.DataFrame:
        """A copy of a tabular modality's columns: numeric float64 (NaN missing), categorical
        ``str`` (None missing). Nothing is imputed or scaled."""
        cols = self._modality(name, "tabular")
        return self.frame[cols].copy()

    def tabular_columns(self, name: str) -> tuple[list[str], list[str]]:
        """``(numeric, categorical)`` column names of a tabular modality, in config order."""
        self._modality(name, "tabular")
        numeric, categorical = self._checked.tabular[name]
        return list(numeric), list(categorical)

    # -- identity and summary -----------------------------------------------------------------

    def referenced_files(self) -> list[Path]:
        """Every distinct per-sample file, in modality then row order."""
        files: dict[Path, None] = {}
        for name in self.modality_names:
            if self.modality_type(name) in FILE_MODALITY_TYPES:
                files.update((p, None) for p in self._checked.paths[name] if p is not None)
        return list(files)

    def fingerprint(self) -> str:
        """sha256 hex over the normalised config, the table content and every referenced file.

        The normalised config holds the group column when one is declared (``group``); a dataset
        without one hashes exactly as before the key existed, so its studies still resume.

        File digests are memoised per process by (path, size, mtime_ns); the result is cached on
        the instance. Moving the dataset folder does not change it; editing one byte of any
        referenced file does.
        """
        if self._fingerprint is not None:
            return self._fingerprint
        h = hashlib.sha256()
        h.update(json.dumps(self.config.normalised(), sort_keys=True).encode())
        h.update(json.dumps([str(c) for c in self.frame.columns]).encode())
        h.update(pd.util.hash_pandas_object(self.frame, index=False).to_numpy().tobytes())
        for path in self.referenced_files():
            rel = path.relative_to(self.root).as_posix()
            h.update(f"{rel}\0{file_digest(path)}\n".encode())
        self._fingerprint = h.hexdigest()
        return self._fingerprint

    def info(self) -> dict[str, Any]:
        """JSON-able summary.

        Keys: ``name``, ``task``, ``target``, ``rows``, ``splits`` (rows per split),
        ``classes`` (None for regression), ``class_counts`` (classification / multilabel),
        ``modalities`` ({name: type}), ``missing_rate`` ({name: fraction of rows without it}),
        ``group`` (the group column, None without one), ``groups`` (how many groups; only with a
        group column), ``fingerprint``.
        """
        summary = summarize(self.config, self._checked)
        summary["fingerprint"] = self.fingerprint()
        return summary


__all__ = ["Dataset", "file_digest"]
