"""Datasets: ``dataset.yaml`` schema, validation and the :class:`Dataset` view.

Public API::

    from autofuse.data import Dataset, DatasetError, Problem, validate_dataset

    report = validate_dataset("path/to/dataset")     # never raises for dataset problems
    ds = Dataset.load("path/to/dataset")             # raises DatasetError listing every problem
    ds = Dataset.from_dataframe(df, target="label")  # types, task and split inferred
"""

from autofuse.data.dataset import Dataset
from autofuse.data.problems import DatasetError, Problem, ValidationReport
from autofuse.data.schema import (
    ColumnSplit,
    DatasetConfig,
    ModalityConfig,
    RatioSplit,
    TargetConfig,
)
from autofuse.data.validate import validate_dataset

__all__ = [
    "ColumnSplit",
    "Dataset",
    "DatasetConfig",
    "DatasetError",
    "ModalityConfig",
    "Problem",
    "RatioSplit",
    "TargetConfig",
    "ValidationReport",
    "validate_dataset",
]
