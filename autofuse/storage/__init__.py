"""Storage: Optuna RDB storage (``sql``), autofuse's trial history (``history``), MLflow
(``mlflow``) and the study lock (``lock``).

``make_storage`` is resolved lazily: the MLflow pyfunc model imports ``storage.mlflow`` and must
not pull in Optuna (which ``storage.sql`` imports).
"""

from __future__ import annotations

import importlib
from typing import Any

from autofuse._util import plain_mysql_urls_use_pymysql

# every storage opener (Optuna, the history store, Alembic, the locks, the guard, MLflow) is in
# this package: a plain mysql:// / mariadb:// URL resolves to PyMySQL for all of them alike
plain_mysql_urls_use_pymysql()

__all__ = ["make_storage"]


def __getattr__(name: str) -> Any:
    if name == "make_storage":
        return importlib.import_module("autofuse.storage.sql").make_storage
    raise AttributeError(f"module 'autofuse.storage' has no attribute {name!r}")
