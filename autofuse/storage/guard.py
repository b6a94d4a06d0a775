"""Look at a storage before anything is written into it: refuse one autofuse must not use.

:func:`check_storage` runs where a storage is first opened (:func:`autofuse.storage.sql.
make_storage`, :class:`autofuse.storage.history.HistoryStore`), before Optuna or the Alembic
migrations create a table. It refuses, with one line naming the storage (passwords masked):

- a SQLite "database" that is not one (a file of other data, a folder), or cannot be read;
- a read-only SQLite file, or a file in a read-only folder (SQLite writes its journal beside the
  database), when the caller will write (``search``, ``worker``, ``db upgrade``), or when the
  database would have to be created first; reading an existing study from a read-only file
  (``report``, ``export``, ``leaderboard``) is fine. A server database likewise: a PostgreSQL
  connection in read-only mode (``transaction_read_only``); on MySQL / MariaDB a read-only
  session, a server in read-only mode for a user who may not bypass it, or a user granted no
  ``INSERT`` on the database (see :func:`_mysql_read_only`);
- a database that belongs to another application: it has tables, and none is Optuna's or
  autofuse's; or it has a table with one of their names whose columns are not theirs (a
  ``studies`` or ``trials`` table of its own). Optuna's and autofuse's table layouts come from
  their SQLAlchemy models. A table with their name is theirs when it has every primary- and
  foreign-key column of the model and at least half of its columns (an older schema version,
  which the migrations upgrade, passes; another program's table does not).

An empty database is accepted, and so is an Optuna or autofuse one, other tables beside them
included (Optuna documents sharing a database). The SQLite file is inspected read-only
(``mode=ro``): a file that does not exist is not created by the check. MySQL and MariaDB create
tables outside transactions, so a database another process is setting up at that instant may
look half-made: there a refusal is checked once more under the schema lock (a server lock).
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from pathlib import Path

import sqlalchemy as sa
import sqlalchemy.exc
from optuna.storages._rdb import models as optuna_models
from sqlalchemy.engine import make_url

from autofuse._util import first_line, mask_url, sqlite_path
from autofuse.errors import ConfigError, DamagedFileError
from autofuse.storage.lock import SchemaLock, holding
from autofuse.storage.models import Base

#: the first 16 bytes of every SQLite 3 database file
SQLITE_HEADER = b"SQLite format 3\x00"
#: Alembic version tables (Optuna's, autofuse's): one ``version_num`` column
VERSION_TABLES = ("alembic_version", "autofuse_alembic_version")
#: seconds to wait for a SQLite file another process holds locked
SQLITE_WAIT_S = 60


def check_storage(url: str, *, write: bool = True) -> None:
    """Refuse the storage at ``url`` if autofuse must not use it (see the module docstring).

    Args:
        url: the SQLAlchemy URL.
        write: the caller will write (trials, tables); ``False`` for commands that only read.

    Raises:
        DamagedFileError: a SQLite file that is not a database, or cannot be read as one.
        ConfigError: a read-only storage, a database of another application, a server that
            cannot be reached.
    """
    try:
        u = make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        return  # make_storage / HistoryStore say what is wrong with the URL
    db = sqlite_path(url)
    if u.get_backend_name() == "sqlite":
        if db is None or u.query.get("uri") or str(db).startswith("file:"):
            return  # in memory, or a SQLite URI with its own options: nothing to inspect
        tables = _sqlite_tables(url, db, write)
    else:
        tables, read_only = _server_tables(url)
        if read_only and (write or not tables):  # writing, or Optuna would create its tables
            raise ConfigError(
                f"--storage {mask_url(url)}: the database is read-only ({read_only})"
                + ("; autofuse writes its trials there" if write else " and holds no study yet")
            )
    try:
        _check_tables(url, tables)
    except ConfigError:
        if db is not None:  # SQLite creates tables in a transaction: never seen half-made
            raise
        # MySQL / MariaDB create tables outside transactions: another process may be creating
        # them at this instant (they look half-made); it holds the schema lock while it does
        # (a server lock: nothing is written), so once it is done, look again
        with holding(SchemaLock(url)):
            again = _server_tables(url)[0]
        _check_tables(url, again)


# ---- SQLite ------------------------------------------------------------------------------------


def _sqlite_tables(url: str, db: Path, write: bool) -> dict[str, set[str]]:
    """The tables of the SQLite file ``db`` (none when it does not exist yet), after checking
    that it is a database and can be written when it must be."""
    name = mask_url(url)
    if not db.exists():
        folder = _existing_ancestor(db.parent)
        if not folder.is_dir():
            raise ConfigError(f"--storage {name}: {folder} is a file, not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(
                f"--storage {name}: the folder {folder} is read-only; the database {db} "
                "cannot be created there"
            )
        return {}
    if db.is_dir():
        raise ConfigError(f"--storage {name}: {db} is a folder, not a SQLite database file")
    try:
        with open(db, "rb") as fh:
            head = fh.read(len(SQLITE_HEADER))
    except OSError as e:
        raise DamagedFileError(db, f"cannot be read ({first_line(e)})") from None
    if head and head != SQLITE_HEADER:
        raise DamagedFileError(
            db, "not a SQLite database (it holds other data); use another --storage file"
        )
    tables = _read_sqlite_tables(db)
    if write or not tables:  # writing, or Optuna would create its tables now
        if not os.access(db, os.W_OK):
            raise ConfigError(
                f"--storage {name}: the database file {db} is read-only"
                + ("; autofuse writes its trials there" if write else " and holds no study yet")
            )
        if not os.access(db.parent, os.W_OK | os.X_OK):
            raise ConfigError(
                f"--storage {name}: the folder {db.parent} is read-only; SQLite writes its "
                "journal beside the database"
            )
    return tables


def _existing_ancestor(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _read_sqlite_tables(db: Path) -> dict[str, set[str]]:
    """Table -> column names, read through a read-only connection (nothing is written)."""
    uri = f"file:{urllib.parse.quote(str(db.absolute()))}?mode=ro"
    try:
        con = sqlite3.connect(uri, uri=True, timeout=SQLITE_WAIT_S)
    except sqlite3.Error as e:
        raise DamagedFileError(db, f"cannot be opened ({first_line(e)})") from None
    try:
        names = [
            r[0]
            for r in con.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {
            t: {r[1] for r in con.execute(f'PRAGMA table_info("{t.replace(chr(34), "")}")')}
            for t in names
        }
    except sqlite3.DatabaseError as e:  # "file is not a database", "disk image is malformed"
        raise DamagedFileError(
            db, f"cannot be read as a SQLite database ({first_line(e)})"
        ) from None
    finally:
        con.close()


# ---- PostgreSQL, MySQL / MariaDB ---------------------------------------------------------------


def _server_tables(url: str) -> tuple[dict[str, set[str]], str | None]:
    """``(table -> columns of the tables Optuna or autofuse name (others: empty), why it is
    read-only or None)`` of the database at ``url``."""
    known = _known_tables()
    try:
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError):
        return {}, None  # make_storage / HistoryStore say what is wrong with the URL
    try:
        with engine.connect() as conn:
            insp = sa.inspect(conn)
            tables = {
                t: (
                    {c["name"] for c in insp.get_columns(t)}
                    if t in known or t in VERSION_TABLES
                    else set()
                )
                for t in insp.get_table_names()
            }
            read_only = None
            if engine.dialect.name == "postgresql":
                if conn.execute(sa.text("SHOW transaction_read_only")).scalar() == "on":
                    read_only = "transaction_read_only is on"
            elif engine.dialect.name in ("mysql", "mariadb"):
                read_only = _mysql_read_only(conn)
            return tables, read_only
    except sa.exc.OperationalError as e:
        raise ConfigError(
            f"--storage {mask_url(url)!r}: cannot connect ({first_line(e)})"
        ) from None
    except sa.exc.DBAPIError as e:
        raise ConfigError(
            f"--storage {mask_url(url)!r}: cannot list its tables ({first_line(e)})"
        ) from None
    finally:
        engine.dispose()


def _mysql_read_only(conn: sa.Connection) -> str | None:
    """Why the MySQL / MariaDB connection ``conn`` cannot write to its database, or None.

    Only what the server says for sure refuses; what it cannot tell (an older server without a
    variable or a view, privileges that come through a role) counts as writable, and the write
    itself then says what is wrong:

    - the session is read-only (``SET SESSION TRANSACTION READ ONLY``, an ``init_command``):
      ``transaction_read_only`` (MySQL >= 5.7.20, MariaDB >= 11.1), ``tx_read_only`` before;
    - MySQL's ``super_read_only``: nobody writes;
    - the server's ``read_only``, for a user without the privilege that bypasses it (``SUPER``;
      on MariaDB >= 10.5.2 ``READ ONLY ADMIN``);
    - the user is granted ``INSERT`` nowhere: not globally, not on the database (a pattern such
      as ``app\\_%`` included), not on one of its tables, not through ``PUBLIC``, and no role is
      enabled (a role's grants do not show in these views).
    """
    if _first_value(conn, "SELECT @@transaction_read_only", "SELECT @@tx_read_only"):
        return "the session is read-only: transaction_read_only is on"
    if _first_value(conn, "SELECT @@global.super_read_only"):
        return "the server is in super_read_only mode"
    me = f"GRANTEE IN ({_GRANTEE}, 'PUBLIC')"
    privileges = _rows(
        conn, f"SELECT PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES WHERE {me}"
    )
    roles = _rows(conn, "SELECT ROLE_NAME FROM information_schema.ENABLED_ROLES")
    if privileges is None or roles is None or any(r[0] for r in roles):
        return None  # privileges the server does not show here: assume the user may write
    held = {r[0] for r in privileges}
    if _first_value(conn, "SELECT @@global.read_only") and not held & {"SUPER", "READ ONLY ADMIN"}:
        return "the server is in read_only mode"
    if "INSERT" in held:
        return None
    inserts = _first_value(
        conn,
        "SELECT (SELECT COUNT(*) FROM information_schema.SCHEMA_PRIVILEGES "
        f"WHERE {me} AND PRIVILEGE_TYPE = 'INSERT' AND DATABASE() LIKE TABLE_SCHEMA) + "
        "(SELECT COUNT(*) FROM information_schema.TABLE_PRIVILEGES "
        f"WHERE {me} AND PRIVILEGE_TYPE = 'INSERT' AND TABLE_SCHEMA = DATABASE())",
    )
    if inserts == 0:
        user = conn.execute(sa.text("SELECT CURRENT_USER()")).scalar()
        return f"the user {user} is granted no INSERT on it"
    return None


#: ``CURRENT_USER()`` (``bob@%``) as the information_schema views name a grantee (``'bob'@'%'``)
_GRANTEE = (
    "CONCAT('''', SUBSTRING_INDEX(CURRENT_USER(), '@', 1), '''@''', "
    "SUBSTRING_INDEX(CURRENT_USER(), '@', -1), '''')"
)


def _rows(conn: sa.Connection, query: str) -> list[sa.Row] | None:
    """The rows of ``query``, or None where the server does not know a variable or a view (an
    error does not end a MySQL transaction: the connection goes on)."""
    try:
        return list(conn.execute(sa.text(query)))
    except sa.exc.DBAPIError:
        return None


def _first_value(conn: sa.Connection, *queries: str) -> object:
    """The value of the first of ``queries`` the server answers (None if it answers none)."""
    for query in queries:
        rows = _rows(conn, query)
        if rows is not None:
            return rows[0][0] if rows else None
    return None


# ---- whose tables ------------------------------------------------------------------------------


def _known_tables() -> dict[str, sa.Table]:
    """Optuna's and autofuse's tables by name, from their SQLAlchemy models."""
    return {**optuna_models.BaseModel.metadata.tables, **Base.metadata.tables}


def foreign_table(name: str, columns: set[str]) -> bool:
    """Whether the table ``name`` with ``columns``, named like one of Optuna's or autofuse's,
    is another application's (see the module docstring)."""
    if name in VERSION_TABLES:
        return "version_num" not in columns
    model = _known_tables()[name]
    own = {c.name for c in model.columns}
    keys = {c.name for c in model.primary_key} | {fk.parent.name for fk in model.foreign_keys}
    return not keys <= columns or 2 * len(own & columns) < len(own)


def _check_tables(url: str, tables: dict[str, set[str]]) -> None:
    if not tables:
        return  # an empty database: Optuna and autofuse create their tables
    known = set(_known_tables()) | set(VERSION_TABLES)
    ours = sorted(t for t in tables if t in known)
    for t in ours:
        if foreign_table(t, tables[t]):
            cols = ", ".join(sorted(tables[t])[:8]) or "none"
            raise ConfigError(
                f"--storage {mask_url(url)}: its table {t!r} is not Optuna's or autofuse's "
                f"(columns: {cols}); the database belongs to another application: use an "
                "empty database or one autofuse created"
            )
    if not [t for t in ours if t != "alembic_version"]:  # alembic_version alone: anyone's
        others = sorted(tables)
        listed = ", ".join(others[:6]) + (f" and {len(others) - 6} more" if len(others) > 6 else "")
        raise ConfigError(
            f"--storage {mask_url(url)}: the database belongs to another application (tables "
            f"{listed}; none of Optuna's or autofuse's); use an empty database or one autofuse "
            "created"
        )


__all__ = ["SQLITE_HEADER", "check_storage", "foreign_table"]
