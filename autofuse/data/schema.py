"""Pydantic models for ``dataset.yaml`` (see DESIGN.md, "Dataset format").

Every model forbids unknown keys, so a typo such as ``colum:`` is reported with the key's name
instead of being silently ignored.

Example::

    name: avmnist
    table: samples.csv
    id_column: id
    target: {column: label, task: classification}
    split: {column: split}               # or {val: 0.15, test: 0.15, seed: 0, group: subject}
    group: subject                       # optional: each row's group (subject, session, ...)
    modalities:
      digit_image: {type: image, column: image_path}
      meta:        {type: tabular, columns: [age, dept], categorical: [dept]}
    non_finite: error                    # or missing: inf / nan cells count as missing

``group`` names the column holding each row's group (a subject, a session, a patient: rows that
are not independent of each other). Rows of one group never straddle two cross-validation folds,
and a ratio split keeps each group whole in one split (as if ``split.group`` named the same
column; a ``split.group`` naming another column is an error). Every row needs a group: an empty
group cell is a problem naming its row. ``split.group`` alone still works and also serves as the
dataset's group.
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

ModalityType = Literal["image", "audio", "text", "tabular", "timeseries"]
Task = Literal["classification", "regression", "multilabel"]
NonFinitePolicy = Literal["error", "missing"]

#: Modality types whose cells hold a path to a per-sample file.
FILE_MODALITY_TYPES: tuple[str, ...] = ("image", "audio", "timeseries")
#: Modality types that may span several columns.
MULTI_COLUMN_TYPES: tuple[str, ...] = ("text", "tabular")
#: Values allowed in a split column.
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
#: Table formats, by file extension.
TABLE_EXTENSIONS: tuple[str, ...] = (".csv", ".parquet", ".jsonl")

#: checked with ``fullmatch``: ``re.match`` with ``$`` would accept a name ending in a newline
_MODALITY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: control characters (newline, carriage return, tab, NUL, DEL, ...): never part of a name
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def name_problem(value: str) -> str | None:
    """Why ``value`` cannot be a column or dataset name (it holds a control character such as
    a newline or a carriage return), or None."""
    bad = _CONTROL.search(value)
    if bad is None:
        return None
    return f"{value!r} holds a control character ({bad.group()!r}); remove it"


def _check_name(value: str | None) -> str | None:
    if value is not None and (problem := name_problem(value)):
        raise ValueError(problem)
    return value


def _check_names(values: list[str] | None) -> list[str] | None:
    for v in values or []:
        _check_name(v)
    return values


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TargetConfig(_Strict):
    """What to predict.

    Attributes:
        column: table column holding the target.
        task: ``classification`` (one label per row), ``regression`` (a number) or
            ``multilabel`` (several labels per row, joined by ``separator``).
        separator: label separator of multilabel targets.
    """

    column: str = Field(min_length=1)
    task: Task = "classification"
    separator: str = Field(default="|", min_length=1)

    _names = field_validator("column")(_check_name)


class ColumnSplit(_Strict):
    """Split given per row by a column whose values are ``train``, ``val`` or ``test``."""

    column: str = Field(min_length=1)

    _names = field_validator("column")(_check_name)


class RatioSplit(_Strict):
    """Random split by ratios, deterministic for a given ``seed``.

    Classification targets are stratified by class unless ``group`` is given; with ``group``
    all rows sharing a value of that column land in the same split.
    """

    val: float = Field(default=0.15, gt=0.0, lt=1.0)
    test: float = Field(default=0.15, gt=0.0, lt=1.0)
    seed: int = 0
    group: str | None = Field(default=None, min_length=1)

    _names = field_validator("group")(_check_name)

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> RatioSplit:
        if self.val + self.test >= 1.0:
            raise ValueError(f"val + test must be below 1 (got {self.val} + {self.test})")
        return self


def _split_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "column" if "column" in value else "ratio"
    if isinstance(value, ColumnSplit):
        return "column"
    return "ratio"


SplitConfig = Annotated[
    Union[Annotated[ColumnSplit, Tag("column")], Annotated[RatioSplit, Tag("ratio")]],
    Discriminator(_split_kind),
]


class ModalityConfig(_Strict):
    """One input modality.

    Attributes:
        type: image | audio | text | tabular | timeseries.
        column: the single column holding the modality (file path for image / audio /
            timeseries, the string for text, a value for tabular).
        columns: several columns (text and tabular only).
        categorical: tabular columns to treat as categories.
        numeric: tabular columns that must be numeric: every cell that is not a number is
            reported. Columns in neither list are numeric when nearly all their cells are
            numbers (see :data:`~autofuse.data.cells.NUMERIC_MIN_SHARE`), else categorical.
    """

    type: ModalityType
    column: str | None = Field(default=None, min_length=1)
    columns: list[str] | None = Field(default=None, min_length=1)
    categorical: list[str] = Field(default_factory=list)
    numeric: list[str] = Field(default_factory=list)

    _name = field_validator("column")(_check_name)
    _names = field_validator("columns", "categorical", "numeric")(_check_names)

    @model_validator(mode="after")
    def _check_columns(self) -> ModalityConfig:
        if (self.column is None) == (self.columns is None):
            raise ValueError("give exactly one of 'column' or 'columns'")
        if self.columns is not None:
            if self.type not in MULTI_COLUMN_TYPES:
                raise ValueError(
                    f"a {self.type} modality takes one 'column' (a file path), not 'columns'"
                )
            duplicated = sorted({c for c in self.columns if self.columns.count(c) > 1})
            if duplicated:
                raise ValueError(f"columns listed twice: {duplicated}")
        for key in ("categorical", "numeric"):
            listed = getattr(self, key)
            if not listed:
                continue
            if self.type != "tabular":
                raise ValueError(f"'{key}' is only allowed for tabular modalities")
            unknown = [c for c in listed if c not in self.cols]
            if unknown:
                raise ValueError(f"{key} columns {unknown} are not among the columns")
        both = [c for c in self.numeric if c in self.categorical]
        if both:
            raise ValueError(f"columns {both} are listed as both categorical and numeric")
        return self

    @property
    def cols(self) -> list[str]:
        """The modality's columns, whether given as ``column`` or ``columns``."""
        return [self.column] if self.column is not None else list(self.columns or [])


@functools.lru_cache(maxsize=1)
def _reserved_names() -> frozenset[str]:
    from torch import nn  # lazy: validating a dataset.yaml should not pay for torch up front

    return frozenset(dir(nn.Module())) | frozenset(dir(nn.ModuleDict()))


class DatasetConfig(_Strict):
    """The whole ``dataset.yaml``.

    Attributes:
        name: dataset name.
        table: the table file (``.csv``, ``.parquet`` or ``.jsonl``), relative to the folder.
        id_column: optional column of unique sample ids.
        target: what to predict.
        split: a :class:`ColumnSplit` or a :class:`RatioSplit` (default: ratio 0.15 / 0.15).
        modalities: input modalities by name, in order.
        group: optional column holding each row's group (subject, session, patient, ...): rows
            of one group never straddle two cross-validation folds, nor two splits of a ratio
            split. ``split.group`` must name the same column when both are given.
        non_finite: what a non-finite value (``inf``, ``-inf``, ``1e400``, a NaN literal such
            as ``nan`` or ``n/a``) in a numeric tabular column does: ``error`` (default: each
            one is a problem naming its row and column) or ``missing`` (the cell counts as
            missing: imputed, with the column's missing indicator).
    """

    name: str = Field(min_length=1)
    table: str = Field(min_length=1)
    id_column: str | None = Field(default=None, min_length=1)
    target: TargetConfig
    split: SplitConfig = Field(default_factory=RatioSplit)
    modalities: dict[str, ModalityConfig] = Field(min_length=1)
    non_finite: NonFinitePolicy = "error"
    group: str | None = Field(default=None, min_length=1)

    _names = field_validator("name", "id_column", "group")(_check_name)

    @model_validator(mode="after")
    def _one_group_column(self) -> DatasetConfig:
        split_group = self.split.group if isinstance(self.split, RatioSplit) else None
        if self.group is not None and split_group is not None and split_group != self.group:
            raise ValueError(
                f"key group names column '{self.group}' but key split.group names "
                f"'{split_group}': give one group column (drop split.group, or make both the same)"
            )
        return self

    @property
    def group_column(self) -> str | None:
        """The column holding each row's group: ``group``, else a ratio split's ``group``,
        else None."""
        if self.group is not None:
            return self.group
        return self.split.group if isinstance(self.split, RatioSplit) else None

    @property
    def group_key(self) -> str | None:
        """The ``dataset.yaml`` key that declared :attr:`group_column` (for messages)."""
        if self.group is not None:
            return "group"
        return "split.group" if self.group_column is not None else None

    @field_validator("modalities")
    @classmethod
    def _check_names(cls, value: dict[str, ModalityConfig]) -> dict[str, ModalityConfig]:
        bad = [name for name in value if not _MODALITY_NAME.fullmatch(name)]
        if bad:
            raise ValueError(
                f"modality names must be identifiers (letters, digits, '_'); got {bad}"
            )
        # modality names become keys of nn.ModuleDicts: a name that is already an attribute of
        # nn.Module (e.g. "type", "training", "forward") cannot be registered there
        reserved = [name for name in value if name in _reserved_names()]
        if reserved:
            raise ValueError(
                f"modality names {reserved} are reserved; rename them (e.g. {reserved[0]}_)"
            )
        return value

    def normalised(self) -> dict[str, Any]:
        """The config as a JSON-able dict with every default filled in (used for fingerprints).

        Keys added after the first release are left out while at their default, so that a
        dataset's fingerprint (and so a study's resume check) does not change with the release.
        """
        doc = self.model_dump(mode="json")
        if doc["non_finite"] == "error":
            del doc["non_finite"]
        if doc["group"] is None:
            del doc["group"]
        for mod in doc["modalities"].values():
            if not mod["numeric"]:
                del mod["numeric"]
        return doc
