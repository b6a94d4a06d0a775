"""Storage: Optuna RDB storage helpers (and, later, autofuse's own tables and MLflow)."""

from autofuse.storage.sql import make_storage

__all__ = ["make_storage"]
