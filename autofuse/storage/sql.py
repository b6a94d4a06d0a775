"""Optuna RDB storage from any SQLAlchemy URL, with safe defaults for SQLite."""

from __future__ import annotations

import logging

import optuna
import sqlalchemy.exc
from sqlalchemy import event

from autofuse._util import first_line, sqlite_path
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
    db = sqlite_path(url)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)


def make_storage(url: str, **kwargs):
    """An ``optuna.storages.RDBStorage`` for ``url``; a bad URL or unreachable server is a ConfigError."""
    ensure_sqlite_dir(url)
    try:
        storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs_for(url), **kwargs)
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError) as e:
        raise ConfigError(f"--storage {url!r}: not a usable SQLAlchemy URL ({e})") from None
    except sqlalchemy.exc.OperationalError as e:
        raise ConfigError(f"--storage {url!r}: cannot connect ({first_line(e)})") from None
    if url.startswith("sqlite") and ":memory:" not in url:  # one process only: nothing to race
        immediate_transactions(storage.engine)
    return storage


def immediate_transactions(engine) -> None:
    """Make every transaction on a SQLite ``engine`` take the write lock at its start.

    Optuna hands an enqueued (WAITING) trial to one worker with ``SELECT ... FOR UPDATE``; SQLite
    ignores ``FOR UPDATE`` and the pysqlite driver only opens its transaction at the first write,
    so two processes could both read the trial as WAITING and both run it. ``BEGIN IMMEDIATE``
    serialises the read-check-write (the busy timeout makes the others wait). This is the
    SQLAlchemy recipe for pysqlite transactions; no library setting does it.
    """

    @event.listens_for(engine, "connect")
    def _no_driver_begin(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # pysqlite: we emit BEGIN ourselves

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners existed are not reused
