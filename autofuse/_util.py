"""Small helpers used across the package (no autofuse imports: the bottom layer).

- :func:`atomic_write` / :func:`atomic_write_text`: write a file next to its final name and
  rename it into place, so a reader never sees half a file (one temp-name scheme for all).
- :func:`json_text` / :func:`json_safe`: strict JSON (non-finite floats as ``null``).
- :func:`first_line`: the first line of an exception's message (never raises).
- :func:`sqlite_path`: the database file of a SQLite SQLAlchemy URL (via ``make_url``).
- :func:`plain_mysql_urls_use_pymysql`: a plain ``mysql://`` / ``mariadb://`` URL uses PyMySQL.
- :func:`mask_url` / :func:`mask_secrets`: a URL, or any text, with its passwords and tokens
  replaced by ``***`` (for every message and log line that shows a storage or MLflow URL).
- :func:`better`, :func:`sort_sign`, :func:`best_first`: the maximize / minimize comparisons.
- :func:`utcnow`: naive UTC "now", as stored in SQL.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.dialects import registry as dialect_registry
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

T = TypeVar("T")


# ---- files -------------------------------------------------------------------------------------


def temp_sibling(path: str | os.PathLike[str]) -> Path:
    """A unique hidden name beside ``path`` (same folder, so a rename is atomic)."""
    p = Path(path)
    return p.parent / f".{p.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` in one rename.

    On an exception the temporary file is removed and ``path`` is left as it was::

        with atomic_write(out / "model.safetensors") as tmp:
            save_weights(state, tmp)  # autofuse.weights
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_dir(final: Path, write: Callable[[Path], None]) -> bool:
    """Fill a temporary sibling folder with ``write(tmp)``, then rename it to ``final``.

    Returns:
        True if this call created ``final``; False if another process got there first (its
        entry is kept and this one discarded).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final)
    tmp.mkdir()
    try:
        write(tmp)
        try:
            os.rename(tmp, final)
            return True
        except OSError:
            if final.exists():  # lost the race: the other writer's entry is complete
                shutil.rmtree(tmp, ignore_errors=True)
                return False
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def folder_problem(path: str | os.PathLike[str], *, write: bool = True) -> str | None:
    """Why ``path`` cannot be used as a folder (to write into, with ``write``), or None.

    A path that does not exist yet is fine when its nearest existing parent is a folder this
    process may write into (it is created later). Nothing is created or written here.
    """
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        return "is a file, not a folder"
    parent = p
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot be created: {parent} is a file"
    if write and not os.access(parent, os.W_OK | os.X_OK):
        return "is read-only" if parent == p else f"cannot be created: {parent} is read-only"
    return None


def workdir_problem(root: str | os.PathLike[str]) -> str | None:
    """Why autofuse cannot write under ``root`` (itself, or its ``trials/`` / ``reports/``), or
    None."""
    root = Path(root).expanduser()
    problem = folder_problem(root)
    if problem:
        return f"{problem} (autofuse writes trials/ and reports/ there)"
    for sub in ("trials", "reports"):
        problem = folder_problem(root / sub) if (root / sub).exists() else None
        if problem:
            return f"{root / sub} {problem}"
    return None


def discard_dir(folder: Path) -> None:
    """Remove a cache folder safely: rename it aside first, so no reader sees it half-deleted."""
    trash = folder.parent / f".{folder.name}.trash-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(folder, trash)
    except OSError:
        return  # already gone (another process discarded it)
    shutil.rmtree(trash, ignore_errors=True)


def stable_hash(obj: Any) -> str:
    """sha256 hex of a JSON-able object (keys sorted, so dict order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, inf, -inf) replaced by None, recursively
    through dicts, lists and tuples; numpy scalars become Python numbers (via ``.item()``)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    item = getattr(obj, "item", None)
    if callable(item) and type(obj).__module__ == "numpy" and getattr(obj, "ndim", None) == 0:
        return json_safe(item())
    return obj


def json_text(obj: Any, *, indent: int | None = 2, sort_keys: bool = False) -> str:
    """Strict JSON of ``obj``: non-finite floats are written as ``null`` (see :func:`json_safe`),
    never as the bare ``NaN`` / ``Infinity`` that other JSON readers refuse; objects JSON does
    not know are written as their ``str``."""
    return json.dumps(
        json_safe(obj), indent=indent, sort_keys=sort_keys, allow_nan=False, default=str
    )


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


# ---- messages ----------------------------------------------------------------------------------


def first_line(e: BaseException | str, limit: int = 300) -> str:
    """The first non-empty line of an exception's message, else its type name (never raises);
    secrets in URLs are masked (:func:`mask_secrets`)."""
    text = e if isinstance(e, str) else str(getattr(e, "orig", None) or e)
    for line in text.strip().splitlines():
        if line.strip():
            return mask_secrets(line.strip())[:limit]
    return type(e).__name__ if isinstance(e, BaseException) else ""


# ---- storage URLs ------------------------------------------------------------------------------

MASK = "***"
#: query parameters whose values are secrets (``?password=...``, ``?token=...``)
_SECRET_KEYS = re.compile(
    r"^(password|passwd|pwd|pass|secret|token|access_token|auth_token|api_key|apikey|"
    r"access_key|secret_key|client_secret|sas_token|sig)$",
    re.IGNORECASE,
)
#: ``scheme://user:password@host`` anywhere in a text (a password with an unescaped ``@``
#: included: it runs to the last ``@`` before the host)
_USERINFO = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s/]*?(?=@[^\s@/]*(?:[/\s'\"?#),;]|$))"
)
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&](?:password|passwd|pwd|secret|token|access_token|api_key|apikey|access_key|"
    r"secret_key|client_secret|sas_token|sig)=)[^&\s]+",
    re.IGNORECASE,
)


def mask_url(url: Any) -> str:
    """``url`` with its password (and secret query parameters) shown as ``***``; other URLs and
    non-URLs are returned as they are (``str(url)``).

    SQLAlchemy URLs are rendered by ``make_url(url).render_as_string(hide_password=True)``;
    http(s) and other URIs (MLflow) by :mod:`urllib.parse`::

        mask_url("postgresql://bob:s3cret@db/optuna")  # 'postgresql://bob:***@db/optuna'
        mask_url("http://bob:s3cret@mlflow:5000")      # 'http://bob:***@mlflow:5000'
    """
    text = "" if url is None else str(url)
    if "://" not in text:
        return text
    scheme = text.split("://", 1)[0].lower()
    if scheme.split("+")[0] in ("http", "https", "file", "databricks", "ftp", "s3", "gs"):
        return mask_secrets(_mask_uri(text))
    try:
        u = make_url(text)
    except (ArgumentError, ValueError):
        return mask_secrets(text)
    secret_query = any(_SECRET_KEYS.match(k) for k in u.query)
    if u.password is None and not secret_query:
        return mask_secrets(text)
    if secret_query:
        u = u.update_query_dict({k: MASK for k in u.query if _SECRET_KEYS.match(k)}, append=False)
    shown = u.render_as_string(hide_password=True).replace("%2A%2A%2A", MASK)
    return mask_secrets(shown)  # what make_url misparses (an unescaped '@' in a password)


def _mask_uri(text: str) -> str:
    try:
        parts = urllib.parse.urlsplit(text)
        password = parts.password
    except ValueError:
        return mask_secrets(text)
    netloc = parts.netloc
    if password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{hostport}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_KEYS.match(k) for k, _ in pairs):
            query = "&".join(
                f"{k}={MASK if _SECRET_KEYS.match(k) else urllib.parse.quote(v, safe='/:')}"
                for k, v in pairs
            )
    if netloc == parts.netloc and query == parts.query:
        return text
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def mask_secrets(text: Any) -> str:
    """Any text (an error message, a log line) with the passwords of the URLs in it, and secret
    query parameters, replaced by ``***``."""
    s = "" if text is None else str(text)
    if "://" not in s and "=" not in s:
        return s
    s = _USERINFO.sub(lambda m: m.group("head") + MASK, s)
    return _QUERY_SECRET.sub(lambda m: m.group("head") + MASK, s)


def plain_mysql_urls_use_pymysql() -> None:
    """Make a plain ``mysql://`` or ``mariadb://`` URL use PyMySQL when mysqlclient is absent.

    SQLAlchemy gives a URL without a driver its default one: ``postgresql://`` psycopg 3 (a
    dependency of autofuse, like psycopg2), ``mysql://`` and ``mariadb://`` mysqlclient
    (``MySQLdb``), a C extension built against libmysqlclient, which autofuse does not require:
    it ships the pure-Python PyMySQL. Optuna's and SQLAlchemy's docs, and most users, write the
    plain form, so without this it fails with "No module named 'MySQLdb'".

    Why SQLAlchemy's dialect registry and not a rewritten URL: a storage URL reaches many
    openers (Optuna's ``RDBStorage``, the history store and its Alembic migrations, the study and
    schema locks, the storage guard, :func:`autofuse.options.storage_problem`, MLflow's SQL
    store) from many entry points (``search``, ``worker``, ``dashboard``, ``storage-proxy``,
    ``report``, the Python API). The registry is the one place where SQLAlchemy turns a URL's
    name into a driver, so every opener in the process resolves the plain form the same way,
    and messages show the URL as the user typed it. Plain ``mysql`` then means exactly
    ``mysql+pymysql`` (and ``mariadb`` ``mariadb+pymysql``). An explicit driver
    (``mysql+mysqldb://``, ``mysql+pymysql://``) is never affected, and with mysqlclient
    installed nothing changes (SQLAlchemy's own default is kept). Idempotent; called where
    storage URLs are checked and opened (``autofuse.options``, ``autofuse.storage``).
    """
    if importlib.util.find_spec("MySQLdb") is not None:
        return  # mysqlclient is installed: SQLAlchemy's default works, leave it alone
    if importlib.util.find_spec("pymysql") is None:
        return
    for name in ("mysql", "mariadb"):  # (no public API replaces a built-in dialect name)
        dialect_registry.impls[name] = functools.partial(dialect_registry.load, f"{name}.pymysql")


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///...`` URL; ``None`` for other URLs and in-memory ones."""
    try:
        u = make_url(url)
    except (ArgumentError, ValueError):
        return None
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database).expanduser()


# ---- objective direction -----------------------------------------------------------------------


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def better(a: float | None, b: float | None, direction: str) -> bool:
    """Whether ``a`` beats ``b`` for a metric to ``maximize`` / ``minimize`` (a non-finite or
    missing ``b`` is beaten by any finite ``a``)."""
    if not finite(a):
        return False
    if not finite(b):
        return True
    return a > b if direction == "maximize" else a < b


def sort_sign(direction: str) -> float:
    """Multiply values by this to sort best first in ascending order."""
    return -1.0 if direction == "maximize" else 1.0


def best_first(items: Iterable[T], value: Callable[[T], float], direction: str) -> list[T]:
    """Items with a finite value, best first (a stable sort: ties keep their order)."""
    sign = sort_sign(direction)
    return sorted((i for i in items if finite(value(i))), key=lambda i: sign * value(i))


# ---- time --------------------------------------------------------------------------------------


def utcnow() -> dt.datetime:
    """Naive UTC now (SQL DateTime columns store naive UTC)."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
