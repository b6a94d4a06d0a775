"""Dataset problems: what a check found wrong, how it is listed, and the error that carries it.

Checks collect :class:`Problem` objects instead of raising, so that one run reports every problem
of a dataset at once; :class:`DatasetError` carries them all when something must fail, and
:class:`ValidationReport` returns them (with a summary) from
:func:`~autofuse.data.validate.validate_dataset`.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from autofuse.errors import AutofuseError

#: Problems of one kind listed by ``str(DatasetError)`` before "... and N more".
MAX_LISTED_PER_KIND = 20


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset.

    Attributes:
        where: the file, key, row and/or column concerned,
            e.g. ``"samples.csv row 17 (id=abc), column image_path"``.
        message: what is wrong, e.g. ``"file not found: img/17.png"``.
        kind: a short machine-readable category (``"file_not_found"``, ``"duplicate_id"``, ...)
            used to group and cap long lists.
    """

    where: str
    message: str
    kind: str = "invalid"

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"

    def location(self) -> dict[str, Any]:
        """:attr:`where` taken apart: ``file`` (the table, ``dataset.yaml``, a folder, or
        ``dataframe`` / ``config``), ``row`` (1-based data row) and ``id``, ``column``, ``key``
        (of ``dataset.yaml``) and ``line``; None where it does not apply."""
        m = _WHERE.fullmatch(self.where)
        assert m is not None  # the pattern matches any text (all but ``file`` are optional)
        found = m.groupdict()
        return {
            "file": found["file"],
            "row": int(found["row"]) if found["row"] else None,
            "id": found["id"],
            "column": found["column"],
            "key": found["key"],
            "line": int(found["line"]) if found["line"] else None,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: ``where``, ``message``, ``kind``, the parts of :meth:`location` and
        ``text``, the problem's line as ``autofuse data validate`` prints it."""
        return {**dataclasses.asdict(self), **self.location(), "text": str(self)}


#: How checks write :attr:`Problem.where`: ``samples.csv row 17 (id=abc), column image_path``,
#: ``samples.csv, column label``, ``dataset.yaml, key target.column``, ``dataset.yaml line 3``.
_WHERE = re.compile(
    r"(?P<file>.+?)"
    r"(?: row (?P<row>\d+)(?: \(id=(?P<id>.*?)\))?)?"
    r"(?: line (?P<line>\d+))?"
    r"(?:, key (?P<key>.+)|, columns? (?P<column>.+))?",
    re.DOTALL,
)


def format_problems(
    problems: Sequence[Problem], max_per_kind: int | None = MAX_LISTED_PER_KIND
) -> list[str]:
    """Render problems one per line, listing at most ``max_per_kind`` of each kind.

    Args:
        problems: the problems, in report order.
        max_per_kind: cap per :attr:`Problem.kind`; ``None`` lists everything.

    Returns:
        One line per listed problem, plus one ``"... and N more <kind> problems"`` line per kind
        that was cut.
    """
    lines: list[str] = []
    shown: Counter[str] = Counter()
    total = Counter(p.kind for p in problems)
    for problem in problems:
        if max_per_kind is not None and shown[problem.kind] >= max_per_kind:
            continue
        shown[problem.kind] += 1
        lines.append(str(problem))
    for kind, count in total.items():
        if count > shown[kind]:
            lines.append(f"... and {count - shown[kind]} more {kind.replace('_', ' ')} problems")
    return lines


class DatasetError(AutofuseError):
    """A dataset failed validation.

    Attributes:
        problems: every problem found (not capped).
    """

    def __init__(self, problems: Sequence[Problem], source: str | None = None) -> None:
        self.problems: list[Problem] = list(problems)
        self.source = source
        n = len(self.problems)
        head = f"dataset {source}" if source else "dataset"
        lines = [f"{head} has {n} problem{'s' if n != 1 else ''}:"]
        lines += [f"  {line}" for line in format_problems(self.problems)]
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[Any, ...]:  # keep problems when sent between processes
        return (self.__class__, (self.problems, self.source))


@dataclass
class ValidationReport:
    """Result of :func:`validate_dataset`.

    Attributes:
        problems: every problem found; empty when the dataset is valid.
        summary: when valid, the dataset's summary (task, rows per split, modalities with type,
            classes, missing rate per modality); ``None`` otherwise.
    """

    problems: list[Problem]
    summary: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def counts(self) -> dict[str, int]:
        """Number of problems per kind."""
        return dict(Counter(p.kind for p in self.problems))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: ``ok``, ``problems`` (every one, uncapped: see
        :meth:`Problem.to_dict`), ``counts`` (problems per kind) and ``summary``."""
        return {
            "ok": self.ok,
            "problems": [p.to_dict() for p in self.problems],
            "counts": self.counts(),
            "summary": self.summary,
        }

    def lines(self, max_per_kind: int | None = MAX_LISTED_PER_KIND) -> list[str]:
        """Problems one per line, capped per kind (see :func:`format_problems`)."""
        return format_problems(self.problems, max_per_kind)
