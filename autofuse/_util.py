"""Small helpers used across the package (no autofuse imports: the bottom layer).

- :func:`atomic_write` / :func:`atomic_write_text`: write a file next to its final name and
  rename it into place, so a reader never sees half a file (one temp-name scheme for all).
- :func:`first_line`: the first line of an exception's message (never raises).
- :func:`sqlite_path`: the database file of a SQLite SQLAlchemy URL (via ``make_url``).
- :func:`better`, :func:`sort_sign`, :func:`best_first`: the maximize / minimize comparisons.
- :func:`utcnow`: naive UTC "now", as stored in SQL.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

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
            save_file(state, str(tmp))
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


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


# ---- messages ----------------------------------------------------------------------------------


def first_line(e: BaseException | str, limit: int = 300) -> str:
    """The first non-empty line of an exception's message, else its type name (never raises)."""
    text = e if isinstance(e, str) else str(getattr(e, "orig", None) or e)
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(e).__name__ if isinstance(e, BaseException) else ""


# ---- storage URLs ------------------------------------------------------------------------------


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
