"""Where outputs go: ``trials/`` and ``reports/`` under the work directory."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from autofuse._util import folder_problem, workdir_problem
from autofuse.errors import ConfigError

#: checked with ``fullmatch``: ``re.match`` with ``$`` accepts a name ending in a newline
_STUDY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class Paths:
    """Output layout rooted at a work directory (``--workdir``, ``AUTOFUSE_HOME`` or the cwd)."""

    root: Path
    #: where ``root`` came from, for messages: --workdir, AUTOFUSE_HOME or the current directory
    source: str = field(default="--workdir", compare=False)

    @classmethod
    def resolve(cls, workdir: str | Path | None = None) -> Paths:
        """The work directory: ``workdir``, else ``$AUTOFUSE_HOME``, else the cwd. One that is a
        file (or lies under a file) is a ConfigError naming where it came from."""
        if workdir:
            root, source = Path(workdir), "--workdir"
        elif os.environ.get("AUTOFUSE_HOME"):
            root, source = Path(os.environ["AUTOFUSE_HOME"]), "AUTOFUSE_HOME"
        else:
            root, source = Path.cwd(), "the current directory"
        problem = folder_problem(root, write=False)
        if problem:
            raise ConfigError(f"{source} {str(root)!r}: {problem}")
        return cls(root.expanduser().resolve(), source)

    def writable(self) -> Paths:
        """``self`` when outputs can be written under it, else a ConfigError saying why (a
        read-only folder, ``trials/`` or ``reports/`` a file); nothing is created here."""
        problem = workdir_problem(self.root)
        if problem:
            raise ConfigError(f"{self.source} {str(self.root)!r}: {problem}")
        return self

    @property
    def trials(self) -> Path:
        return self.root / "trials"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def cache(self) -> Path:
        return self.trials / "cache"

    @property
    def default_storage(self) -> str:
        return f"sqlite:///{self.trials / 'autofuse.db'}"

    def study_dir(self, study: str) -> Path:
        return self.trials / check_study_name(study)


def check_study_name(name: str) -> str:
    """Study names become folder names, MLflow experiment and registered-model names: letters,
    digits, ``_ . -`` only (no space, newline, carriage return or other control character)."""
    if not isinstance(name, str) or not _STUDY_RE.fullmatch(name):
        raise ConfigError(
            f"--study {name!r}: use letters, digits, '_', '.' or '-' (max 128 characters)"
        )
    return name
