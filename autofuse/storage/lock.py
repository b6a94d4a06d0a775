"""Cross-process locks: one per study, so that workers on any machine start trials one at a time,
and one per storage, so that processes starting at once create its tables once.

A worker starts a trial only while ``finished + running < target``; checking and creating the
trial are two storage calls, so two workers could pass the check together and the study would end
with more trials than asked for. Holding this lock from the check until the new trial is RUNNING
makes the pair atomic. Optuna has no such lock, so it is written here over each backend's own
primitive: a file lock beside a SQLite database (``filelock``), a session advisory lock on
PostgreSQL, ``GET_LOCK`` on MySQL/MariaDB. All are released by the server or the OS if the worker
dies while holding one.

:class:`SchemaLock` is the same lock under a name no study can have: Optuna's ``RDBStorage`` and
autofuse's Alembic migrations create tables with "check, then create", so N processes opening a
new database at the same instant would each try to create them (``Table ... already exists``,
duplicated version rows). :func:`autofuse.storage.sql.make_storage` and
:class:`autofuse.storage.history.HistoryStore` create or migrate tables only under it.
"""

from __future__ import annotations

import contextlib
import logging
import zlib
from collections.abc import Iterator

import sqlalchemy as sa
from filelock import FileLock

from autofuse._util import first_line, sqlite_path

log = logging.getLogger(__name__)


class StudyLock:
    """Exclusive lock named after ``study`` on the storage at ``url``; ``release`` is idempotent."""

    def __init__(self, url: str, study: str) -> None:
        self._setup(url, study, f"autofuse:{study}", f"study {study!r}")

    def _setup(self, url: str, study: str, name: str, what: str) -> None:
        self.url, self.study, self.what = url, study, what
        self.kind = url.split(":", 1)[0].split("+", 1)[0]
        self._held = False
        self._file = None
        self._conn = None
        if self.kind == "sqlite" and sqlite_path(url) is not None:
            db = sqlite_path(url)
            self._file = FileLock(str(db) + f".{zlib.crc32(name.encode()):08x}.lock")
        elif self.kind in ("postgresql", "mysql", "mariadb"):
            # one dedicated connection for the worker's life: these locks belong to a session
            self._engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
            self._key = zlib.crc32(name.encode())  # PostgreSQL: a 64-bit integer key
            self._name = name[:64]  # MySQL: lock names are at most 64 characters
        else:
            log.debug(
                "no study lock for %s storage; concurrent workers may overshoot by a trial",
                self.kind,
            )

    def _connection(self):
        if self._conn is None:
            self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        return self._conn

    def acquire(self) -> None:
        if self._held:
            return
        if self._file is not None:
            self._file.acquire()
        elif self.kind in ("postgresql", "mysql", "mariadb"):
            try:
                self._server_lock()
            except sa.exc.DBAPIError as e:
                if not e.connection_invalidated:
                    raise
                # the idle lock connection was dropped (server restart, idle timeout): reconnect
                log.warning("study lock connection lost (%s); reconnecting", first_line(e))
                self._conn = None
                self._server_lock()
        self._held = True

    def _server_lock(self) -> None:
        conn = self._connection()
        if self.kind == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
            return
        got = conn.execute(sa.text("SELECT GET_LOCK(:n, 600)"), {"n": self._name}).scalar()
        if got != 1:
            raise TimeoutError(f"could not lock {self.what} within 600 s")

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        if self._file is not None:
            self._file.release()
        elif self.kind == "postgresql":
            self._connection().execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
        elif self.kind in ("mysql", "mariadb"):
            self._connection().execute(sa.text("SELECT RELEASE_LOCK(:n)"), {"n": self._name})

    def close(self) -> None:
        self.release()
        if self._conn is not None:
            self._conn.close()
            self._engine.dispose()
            self._conn = None

    def __enter__(self) -> StudyLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class SchemaLock(StudyLock):
    """Exclusive lock on creating or migrating the tables of the storage at ``url`` (a name no
    study can have: study names have no spaces)."""

    def __init__(self, url: str) -> None:
        self._setup(url, "", "autofuse schema", "the autofuse and Optuna tables")


@contextlib.contextmanager
def holding(lock: StudyLock) -> Iterator[StudyLock]:
    """Hold ``lock`` for one block, then release it and close its connection."""
    try:
        with lock:
            yield lock
    finally:
        lock.close()
