"""Dataset validation: read ``dataset.yaml`` and the table, check the content, report problems.

Everything here collects :class:`Problem` objects instead of raising, so that one run reports
every problem of a dataset at once. :func:`validate_dataset` is the public entry point;
:class:`~autofuse.data.dataset.Dataset` reuses :func:`read_config`, :func:`read_table` and
:func:`check_content` and raises :class:`DatasetError` when anything was found.

Row numbers in messages are 1-based *data* row numbers of the table (the header is not counted),
e.g. ``samples.csv row 17 (id=abc), column image_path: file not found: img/17.png``.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
import stat
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from pydantic import ValidationError

from autofuse.data.schema import (
    FILE_MODALITY_TYPES,
    SPLIT_NAMES,
    TABLE_EXTENSIONS,
    ColumnSplit,
    DatasetConfig,
    ModalityConfig,
    RatioSplit,
)
from autofuse.errors import AutofuseError

logger = logging.getLogger(__name__)

CONFIG_FILE = "dataset.yaml"
#: Problems of one kind listed by ``str(DatasetError)`` before "... and N more".
MAX_LISTED_PER_KIND = 20


# --------------------------------------------------------------------------------------------
# Problems and reports
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset.

    Attributes:
        where: the file, key, row and/or column concerned,
            e.g. ``"samples.csv row 17 (id=abc), column image_path"``.
        message: what is wrong, e.g. ``"file not found: img/17.png"``.
        kind: a short machine-readable category (``"file_not_found"``, ``"duplicate_id"``, ...)
            used to group and cap long lists.
    """

    where: str
    message: str
    kind: str = "invalid"

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def format_problems(
    problems: Sequence[Problem], max_per_kind: int | None = MAX_LISTED_PER_KIND
) -> list[str]:
    """Render problems one per line, listing at most ``max_per_kind`` of each kind.

    Args:
        problems: the problems, in report order.
        max_per_kind: cap per :attr:`Problem.kind`; ``None`` lists everything.

    Returns:
        One line per listed problem, plus one ``"... and N more <kind> problems"`` line per kind
        that was cut.
    """
    lines: list[str] = []
    shown: Counter[str] = Counter()
    total = Counter(p.kind for p in problems)
    for problem in problems:
        if max_per_kind is not None and shown[problem.kind] >= max_per_kind:
            continue
        shown[problem.kind] += 1
        lines.append(str(problem))
    for kind, count in total.items():
        if count > shown[kind]:
            lines.append(f"... and {count - shown[kind]} more {kind.replace('_', ' ')} problems")
    return lines


class DatasetError(AutofuseError):
    """A dataset failed validation.

    Attributes:
        problems: every problem found (not capped).
    """

    def __init__(self, problems: Sequence[Problem], source: str | None = None) -> None:
        self.problems: list[Problem] = list(problems)
        self.source = source
        n = len(self.problems)
        head = f"dataset {source}" if source else "dataset"
        lines = [f"{head} has {n} problem{'s' if n != 1 else ''}:"]
        lines += [f"  {line}" for line in format_problems(self.problems)]
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[Any, ...]:  # keep problems when sent between processes
        return (self.__class__, (self.problems, self.source))


@dataclass
class ValidationReport:
    """Result of :func:`validate_dataset`.

    Attributes:
        problems: every problem found; empty when the dataset is valid.
        summary: when valid, the dataset's summary (task, rows per split, modalities with type,
            classes, missing rate per modality); ``None`` otherwise.
    """

    problems: list[Problem]
    summary: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def counts(self) -> dict[str, int]:
        """Number of problems per kind."""
        return dict(Counter(p.kind for p in self.problems))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: ``ok``, ``problems`` (where / message / kind) and ``summary``."""
        return {
            "ok": self.ok,
            "problems": [dataclasses.asdict(p) for p in self.problems],
            "summary": self.summary,
        }

    def lines(self, max_per_kind: int | None = MAX_LISTED_PER_KIND) -> list[str]:
        """Problems one per line, capped per kind (see :func:`format_problems`)."""
        return format_problems(self.problems, max_per_kind)


# --------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# dataset.yaml and the table
# --------------------------------------------------------------------------------------------


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

    def fail(where: str, message: str, kind: str, raw: Any = None) -> tuple[None, Any, list]:
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


# --------------------------------------------------------------------------------------------
# Per-sample files
# --------------------------------------------------------------------------------------------

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
AUDIO_EXTENSIONS = (".wav", ".flac")
TIMESERIES_EXTENSIONS = (".npy",)


@dataclass(frozen=True)
class FileCheck:
    """Result of checking one file: an error message or None, and the channel count (.npy)."""

    error: str | None = None
    channels: int | None = None


def _inside(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """Lexical check that ``path`` stays inside ``root`` (symlinks inside are allowed)."""
    root_s = os.path.normpath(os.path.abspath(root))
    path_s = os.path.normpath(os.path.abspath(path))
    return os.path.commonpath([root_s, path_s]) == root_s


def check_image(path: str | os.PathLike[str]) -> FileCheck:
    """Check that an image opens and decodes (PNG: chunk CRCs; others: a reduced decode)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.format == "PNG":
                im.verify()  # walks every chunk to IEND and checks CRCs; no decompression
                return FileCheck()
            # JPEG decodes at 1/8 scale through draft(); a truncated file still fails in load().
            im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except UnidentifiedImageError:
        return FileCheck("unreadable image (not an image format PIL can identify)")
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for broken files
        return FileCheck(f"unreadable image ({type(exc).__name__}: {exc})")
    return FileCheck()


_WAV_FORMATS = {1: "PCM", 3: "IEEE float", 0xFFFE: "extensible"}


def check_wav(path: str | os.PathLike[str]) -> FileCheck:
    """Check a WAV file's RIFF structure without decoding the samples.

    The ``fmt`` chunk must come before ``data``, describe a format that
    ``scipy.io.wavfile.read`` understands, and the ``data`` chunk must fit inside the file
    (a truncated recording declares more bytes than it has).
    """
    size = os.stat(path).st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return FileCheck("not a WAV file (no RIFF/WAVE header)")
        endian = "<" if head[:4] == b"RIFF" else ">"
        pos, fmt = 12, None
        while True:
            f.seek(pos)
            chunk = f.read(8)
            if len(chunk) < 8:
                return FileCheck("truncated WAV: no data chunk")
            chunk_id, chunk_size = chunk[:4], struct.unpack(endian + "I", chunk[4:])[0]
            body = pos + 8
            if chunk_id == b"fmt ":
                raw = f.read(16)
                if chunk_size < 16 or len(raw) < 16:
                    return FileCheck("truncated WAV: incomplete fmt chunk")
                fmt = struct.unpack(endian + "HHIIHH", raw)
            elif chunk_id == b"data":
                if fmt is None:
                    return FileCheck("invalid WAV: data chunk before fmt chunk")
                tag, channels, rate, _, block_align, bits = fmt
                if tag not in _WAV_FORMATS:
                    return FileCheck(f"unsupported WAV encoding (format tag {tag})")
                if channels < 1 or rate < 1 or block_align < 1 or bits not in (8, 16, 24, 32, 64):
                    return FileCheck(
                        f"invalid WAV header ({channels} channels, {rate} Hz, {bits} bits)"
                    )
                present = size - body
                if chunk_size > present:
                    return FileCheck(
                        f"truncated WAV: data chunk declares {chunk_size} bytes "
                        f"but the file holds {max(present, 0)}"
                    )
                if chunk_size < block_align:
                    return FileCheck("WAV has no audio samples")
                return FileCheck(channels=channels)
            pos = body + chunk_size + (chunk_size & 1)
            if pos > size:
                return FileCheck(f"truncated WAV: chunk {chunk_id!r} runs past the end of the file")


def check_audio(path: str | os.PathLike[str]) -> FileCheck:
    """Check an audio file: WAV in depth, FLAC by its signature."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"fLaC":
        return FileCheck()
    if magic in (b"RIFF", b"RIFX"):
        return check_wav(path)
    return FileCheck("unsupported or unreadable audio file (expected WAV)")


def check_npy(path: str | os.PathLike[str]) -> FileCheck:
    """Check a ``.npy`` timeseries: numeric, shape ``(time, channels)``, not truncated."""
    size = os.stat(path).st_size
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            header_end = f.tell()
    except Exception as exc:  # noqa: BLE001
        return FileCheck(f"not a readable .npy file ({exc})")
    if dtype.hasobject or dtype.kind not in "biuf":
        return FileCheck(f"timeseries must be numeric, got dtype {dtype}")
    expected = header_end + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size < expected:
        return FileCheck(f"truncated .npy file: {size} bytes, expected {expected}")
    if len(shape) != 2:
        return FileCheck(f"timeseries must have shape (time, channels), got {tuple(shape)}")
    if shape[0] == 0 or shape[1] == 0:
        return FileCheck(f"empty timeseries of shape {tuple(shape)}")
    return FileCheck(channels=int(shape[1]))


_CHECKERS: dict[str, Callable[[str | os.PathLike[str]], FileCheck]] = {
    "image": check_image,
    "audio": check_audio,
    "timeseries": check_npy,
}
_check_memo: dict[tuple[str, str, int, int], FileCheck] = {}


def check_file(kind: str, path: str | os.PathLike[str]) -> FileCheck:
    """Check one per-sample file of a modality type; memoised by (path, size, mtime)."""
    try:
        st = os.stat(path)
    except OSError:
        return FileCheck("file not found")
    if not stat.S_ISREG(st.st_mode):
        return FileCheck("not a file")
    key = (kind, str(path), st.st_size, st.st_mtime_ns)
    hit = _check_memo.get(key)
    if hit is None:
        try:
            hit = _CHECKERS[kind](path)
        except OSError as exc:
            hit = FileCheck(f"cannot read file ({exc})")
        _check_memo[key] = hit
    return hit


def check_files(kind: str, paths: Iterable[str]) -> dict[str, FileCheck]:
    """Check many files of one modality type (each distinct path once).

    Files are checked serially: with warm caches a PNG verify takes ~30 us and a WAV header
    parse less, so thread pools only add overhead (the checks are mostly Python code).
    """
    return {p: check_file(kind, p) for p in dict.fromkeys(paths)}


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Content checks
# --------------------------------------------------------------------------------------------


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
    """

    problems: list[Problem] = field(default_factory=list)
    frame: pd.DataFrame | None = None
    split: np.ndarray | None = None
    y: np.ndarray | None = None
    classes: list[str] | None = None
    present: dict[str, np.ndarray] = field(default_factory=dict)
    paths: dict[str, list[Path | None]] = field(default_factory=dict)
    tabular: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)


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
        group_col = cfg.split.group if isinstance(cfg.split, RatioSplit) else None
        has_split = self.has(split_col, "split.column") if split_col else False
        has_group = self.has(group_col, "split.group") if group_col else False
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
        if (split_col is None or has_split) and (group_col is None or has_group):
            self.assign_split(split_col, group_col)
        if has_target and self.out.split is not None and cfg.target.task != "regression":
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
        if channels:
            self.check_channels(column, values, channels)
        self.out.paths[name] = [Path(p) if p is not None else None for p in paths]
        return np.array([v is not None for v in values], dtype=bool)

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
            series = self.frame[c]
            if c not in mod.categorical:
                if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
                    self.frame[c] = series.astype(np.float64)
                    numeric.append(c)
                    continue
                strings = column_strings(series)
                parsed = pd.to_numeric(pd.Series(strings, dtype=object), errors="coerce")
                if int(parsed.notna().sum()) == sum(s is not None for s in strings):
                    self.frame[c] = parsed.astype(np.float64)
                    numeric.append(c)
                    continue
                logger.info(
                    "tabular column %r of modality %r is not numeric: treated as categorical",
                    c,
                    name,
                )
            self.strings(c)
            categorical.append(c)
        self.out.tabular[name] = (numeric, categorical)
        return ~self.frame[mod.cols].isna().all(axis=1).to_numpy()

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

    def assign_split(self, split_col: str | None, group_col: str | None) -> None:
        spec = self.config.split
        if isinstance(spec, ColumnSplit):
            assert split_col is not None
            values = self.strings(split_col)
            split = np.array([v if v in SPLIT_NAMES else "" for v in values], dtype=object)
            for i, v in enumerate(values):
                if v not in SPLIT_NAMES:
                    shown = "empty" if v is None else f"'{v}'"
                    self.add(
                        self.row(i, split_col),
                        f"split value {shown} is not train, val or test",
                        "bad_split_value",
                    )
            where = f"{self.table}, column {split_col}"
        else:
            groups = None
            if group_col is not None:
                groups = self.strings(group_col)
                for i, g in enumerate(groups):
                    if g is None:
                        self.add(self.row(i, group_col), "empty group value", "empty_group")
                if any(g is None for g in groups):
                    return
            strata = None
            if self.config.target.task == "classification" and self.out.y is not None:
                strata = [str(v) for v in self.out.y.tolist()]
            split = ratio_split(self.n, spec, strata=strata, groups=groups)
            where = f"{self.cfg_label}, key split"
        for name in SPLIT_NAMES:
            if not (split == name).any():
                if isinstance(spec, ColumnSplit):
                    message = f"split '{name}' has no rows"
                else:
                    message = (
                        f"split '{name}' gets no rows from the ratio split "
                        f"({self.n} rows, val={spec.val}, test={spec.test}"
                        f"{', grouped by ' + spec.group if spec.group else ''})"
                    )
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
                f"class '{cls}' has no training sample (only in val/test rows {_rows_text(rows)})",
                "class_without_train",
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
