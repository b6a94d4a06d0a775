"""Optuna RDB storage from any SQLAlchemy URL, with safe defaults for SQLite.

Optuna creates its tables when a storage is opened ("check, then create": not safe when several
processes open a new database at the same instant). :func:`make_storage` opens a database whose
Optuna tables are complete directly, and otherwise under :class:`~autofuse.storage.lock.SchemaLock`,
so the tables are created once.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
import sqlalchemy as sa
import sqlalchemy.exc
from sqlalchemy import event

from autofuse._util import first_line, mask_url, sqlite_path
from autofuse.errors import ConfigError
from autofuse.storage.guard import check_storage
from autofuse.storage.lock import SchemaLock, holding
from autofuse.storage.proxy import is_grpc, open_proxy

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
    """An ``optuna.storages.RDBStorage`` for ``url``; a bad URL or unreachable server is a ConfigError.

    ``grpc://HOST:PORT`` is ``autofuse storage-proxy``'s address: a ``GrpcStorageProxy`` client
    (no SQL here; ``kwargs``, the RDB heartbeat settings, do not apply: see
    :mod:`autofuse.storage.proxy` for the heartbeats of proxied workers)."""
    if is_grpc(url):
        return open_proxy(url)
    check_storage(url, write=False)  # not a database, read-only, another application's: refused
    ensure_sqlite_dir(url)

    def rdb():
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs_for(url), **kwargs)

    try:
        if optuna_tables_ready(url):
            storage = rdb()
        else:  # a new database: Optuna creates its tables, once (other processes wait)
            with holding(SchemaLock(url)):
                storage = rdb()
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError) as e:
        raise ConfigError(
            f"--storage {mask_url(url)!r}: not a usable SQLAlchemy URL ({first_line(e)})"
        ) from None
    except sqlalchemy.exc.OperationalError as e:
        raise ConfigError(
            f"--storage {mask_url(url)!r}: cannot connect ({first_line(e)})"
        ) from None
    if url.startswith("sqlite") and ":memory:" not in url:  # one process only: nothing to race
        immediate_transactions(storage.engine)
    return storage


def close_storage(storage: Any) -> None:
    """Close the database connections of an Optuna RDB storage (its pooled idle connections;
    a process that runs many searches would otherwise keep them until garbage collection)."""
    if isinstance(storage, optuna.storages.GrpcStorageProxy):
        storage.close()  # its gRPC channel
        return
    engine = getattr(storage, "engine", None)
    if engine is None:
        return
    storage.remove_session()
    engine.dispose()


def optuna_tables_ready(url: str) -> bool:
    """Whether Optuna finished creating its tables in the database at ``url``: its Alembic
    version row is the last thing ``RDBStorage`` writes when it sets up a new database."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, **_no_pool(engine_kwargs_for(url)))
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return False
            return bool(conn.execute(sa.text("SELECT COUNT(*) FROM alembic_version")).scalar())
    finally:
        engine.dispose()


def _no_pool(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k != "pool_pre_ping"}


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
