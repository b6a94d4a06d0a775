"""Where outputs go: ``trials/`` and ``reports/`` under the work directory."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from autofuse.errors import ConfigError

_STUDY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class Paths:
    """Output layout rooted at a work directory (``--workdir``, ``AUTOFUSE_HOME`` or the cwd)."""

    root: Path

    @classmethod
    def resolve(cls, workdir: str | Path | None = None) -> Paths:
        root = Path(workdir or os.environ.get("AUTOFUSE_HOME") or Path.cwd())
        return cls(root.expanduser().resolve())

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
    """Study names become folder names: letters, digits, ``_ . -`` only."""
    if not _STUDY_RE.match(name or ""):
        raise ConfigError(
            f"--study {name!r}: use letters, digits, '_', '.' or '-' (max 128 characters)"
        )
    return name
