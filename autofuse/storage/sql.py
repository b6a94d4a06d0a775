"""Optuna RDB storage from any SQLAlchemy URL, with safe defaults for SQLite."""

from __future__ import annotations

import logging

from autofuse.errors import ConfigError

log = logging.getLogger(__name__)

#: SQLite busy timeout (seconds): parallel writers wait instead of failing with "database is locked"
SQLITE_TIMEOUT_S = 60


def engine_kwargs_for(url: str) -> dict:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    return {"pool_pre_ping": True}


def ensure_sqlite_dir(url: str) -> None:
    """Create the folder of a SQLite database file (SQLite creates the file, not its folder)."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        from pathlib import Path

        Path(url[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)


def make_storage(url: str, **kwargs):
    """An ``optuna.storages.RDBStorage`` for ``url``; a bad URL or unreachable server is a ConfigError."""
    import optuna
    import sqlalchemy.exc

    ensure_sqlite_dir(url)
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs_for(url), **kwargs)
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError) as e:
        raise ConfigError(f"--storage {url!r}: not a usable SQLAlchemy URL ({e})") from None
    except sqlalchemy.exc.OperationalError as e:
        first = str(e.orig if hasattr(e, "orig") else e).strip().splitlines()[0]
        raise ConfigError(f"--storage {url!r}: cannot connect ({first})") from None
